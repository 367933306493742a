"""``smysl serve``'s line per request, without :mod:`logging` on the request path.

uvicorn's access log formats and writes each line through a ``logging`` record before it sends
the response headers: ~100 us a request on a 2-core EPYC, 13-15% of the CPU a short embedding
request costs the server (benchmarks/server_cpu.py). Here the edge middleware formats the same
line once the response is sent, keeps it in memory, and the event loop writes what has gathered
at most :data:`FLUSH_S` later, in one write (and at shutdown).
"""

from __future__ import annotations

import asyncio
import http
import sys
from typing import TextIO
from urllib.parse import quote

from starlette.types import Scope

#: Seconds a line may wait before it is written.
FLUSH_S = 0.1
#: Bytes written at once at most: below a pipe's atomic write size, so that the lines of
#: ``--workers`` processes sharing one stdout do not cut into each other.
CHUNK = 4096

#: "200 OK"... by status code (uvicorn's words)
_STATUS = {s.value: f"{s.value} {s.phrase}" for s in http.HTTPStatus}


class AccessLog:
    """Lines as uvicorn's access log writes them (``INFO:     127.0.0.1:50000 - "POST /embed
    HTTP/1.1" 200 OK``), with the request's time appended (``3.1 ms``), to ``stream`` (default:
    stdout at write time, where uvicorn's access log goes). A request whose client the server
    saw leave before it answered is logged with status 499."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def add(self, scope: Scope, status: int, seconds: float) -> None:
        """Keep the line of one answered request (after :meth:`close`, write it at once);
        called on the event loop."""
        client = scope.get("client")
        addr = f"{client[0]}:{client[1]}" if client else ""
        # the target as received, as uvicorn >= 0.55 logs it (latin-1, '"' as %22); before
        # it, uvicorn quoted the decoded path (scope["path"]); both include the root path
        raw = scope.get("raw_path")
        path = (raw.decode("latin1").replace('"', "%22") if isinstance(raw, bytes)
                else quote(scope["path"]))
        query = scope.get("query_string", b"")
        if query:
            path += "?" + query.decode("ascii", "replace")
        self._lines.append(
            f'INFO:     {addr} - "{scope["method"]} {path} '
            f'HTTP/{scope.get("http_version", "1.1")}" '
            f"{_STATUS.get(status) or status} {seconds * 1000:.1f} ms\n")
        if self._closed:
            self.flush()
            return
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # a timer of an ended loop never runs
            self._timer, self._loop = loop.call_later(FLUSH_S, self.flush), loop

    def close(self) -> None:
        """Write the lines kept so far, and any later one at once (the server is stopping:
        a request cut off at shutdown ends after this, and the process may end before a
        timer runs)."""
        self._closed = True
        self.flush()

    def flush(self) -> None:
        """Write the lines kept so far."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        chunks: list[list[str]] = [[]]
        size = 0
        for line in lines:  # ASCII but for an odd query string: characters ~ bytes
            if chunks[-1] and size + len(line) > CHUNK:
                chunks.append([])
                size = 0
            chunks[-1].append(line)
            size += len(line)
        stream = self.stream or sys.stdout
        try:
            for chunk in chunks:
                if chunk:
                    stream.write("".join(chunk))
                    stream.flush()
        except (OSError, ValueError):  # stdout closed or gone: the server goes on without
            pass
