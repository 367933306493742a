"""uvicorn's httptools protocol with the request's head bounded.

httptools (uvicorn's default parser) takes a request line and headers of any size, and builds a
header's value by appending each piece it receives to what it has: a client that sends one
100 MB header costs the server ~9 s of CPU, growing with the square of its size, on the event
loop that every other client waits for (a security review: `/health` took 5.5 s meanwhile; vLLM
fixed the same, GHSA-rxc4-3w6r-4v47). No key is needed: the head is parsed before any route.
Here a head longer than :data:`HEAD_BYTES` is refused with 431 and the connection closed, before
the bytes past that are parsed.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The most bytes of a request's line and headers, past the chunk it began in (nginx's default
#: buffers take 4 x 8 KiB; browsers and HTTP libraries send well under 8 KiB). That chunk is
#: up to the event loop's read size (asyncio 256 KiB, uvloop 256,000 bytes), parsed whole: a
#: head sent in one write is refused from ~320 KiB (the parser's cost there is well under a
#: millisecond).
HEAD_BYTES = 64 * 1024

_REFUSED = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: 46\r\n"
            b"connection: close\r\n\r\n"
            b"the request's line and headers exceed 64 KiB\r\n")


class BoundedHeadProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol`, refusing a request whose head outgrows :data:`HEAD_BYTES`
    (counted from the chunk after the one it began in: a pipelined request's start shares a
    chunk with the body before it)."""

    _in_head = False
    _head = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head += len(data)
            if self._head > HEAD_BYTES:
                if not self.transport.is_closing():
                    self.transport.write(_REFUSED)
                    self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
