"""``smysl serve``'s line per request, without :mod:`logging` on the request path, and never
waiting for stdout.

uvicorn's access log formats and writes each line through a ``logging`` record before it sends
the response headers: ~100 us a request on a 2-core EPYC, 13-15% of the CPU a short embedding
request costs the server (benchmarks/server_cpu.py). Here the edge middleware formats the same
line once the response is sent, keeps it in memory, and what has gathered goes at most
:data:`FLUSH_S` later to a writer thread, which writes it in chunks (and at shutdown).

The writes are the thread's, not the event loop's: a stdout that nobody reads (a pipe whose
reader stopped, a paused terminal) used to block the loop on a full pipe, and with it every
request, the health checks and the worker's heartbeat (the supervisor then restarted the
worker, which blocked again). Now the server goes on; the lines that wait beyond
:data:`MAX_PENDING` characters are dropped and counted, and one line says how many once stdout
takes lines again.
"""

from __future__ import annotations

import asyncio
import codecs
import http
import os
import re
import sys
import threading
import time
from typing import TextIO
from urllib.parse import quote, unquote_plus

from starlette.types import Scope

#: Seconds a line may wait before it goes to the writer.
FLUSH_S = 0.1
#: Bytes written at once at most: below a pipe's atomic write size, so that the lines of
#: ``--workers`` processes sharing one stdout do not cut into each other.
CHUNK = 4096
#: Characters of lines that may wait for a stdout that does not take them (~10,000 requests);
#: beyond, new lines are dropped and counted.
MAX_PENDING = 1 << 20
#: Seconds :meth:`AccessLog.close` (and :meth:`~AccessLog.flush`) wait for the writes.
CLOSE_WAIT_S = 2.0

#: "200 OK"... by status code (uvicorn's words)
_STATUS = {s.value: f"{s.value} {s.phrase}" for s in http.HTTPStatus}


#: Words of a query parameter's name that make it a secret (``api_key``, ``access_token``,
#: ``X-Amz-Signature``, ``sig``...): its value is left out of the log. No route reads a key
#: from the query, but a client that put one there had it written to the log. A word ending
#: in "key" or "token" counts too (``apikey``, ``accesstoken``); ``tokenizer`` does not.
_SECRET_WORDS = frozenset({"auth", "authorization", "credential", "credentials", "jwt",
                           "passwd", "password", "pwd", "secret", "session", "sessionid",
                           "sig", "signature"})


def _masked(query: str) -> str:
    """``query`` with the value of each parameter named like a secret as ``***``."""
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        words = [w for w in re.split(r"[^a-z0-9]+", unquote_plus(name).lower()) if w]
        if eq and any(w in _SECRET_WORDS or w.endswith(("key", "token")) for w in words):
            part = f"{name}=***"
        parts.append(part)
    return "&".join(parts)


class AccessLog:
    """Lines as uvicorn's access log writes them (``INFO:     127.0.0.1:50000 - "POST /embed
    HTTP/1.1" 200 OK``), with the request's time appended (``3.1 ms``), to ``stream`` (default:
    stdout at write time, where uvicorn's access log goes). A request whose client the server
    saw leave before it answered is logged with status 499."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lines: list[str] = []  # on the event loop, until the timer hands them over
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # between the event loop and the writer thread
        self._cond = threading.Condition()
        self._pending: list[str] = []
        self._pending_chars = 0
        self._dropped = 0  # lines dropped since the writer last took lines
        self._queued = 0  # lines handed over, ever
        self._written = 0  # of them, written (or lost to a broken stdout)
        self._stuck = False  # a wait for the writer timed out, and it has not written since
        self._writer: threading.Thread | None = None

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
            path += "?" + _masked(query.decode("ascii", "replace"))
        self._lines.append(
            f'INFO:     {addr} - "{scope["method"]} {path} '
            f'HTTP/{scope.get("http_version", "1.1")}" '
            f"{_STATUS.get(status) or status} {seconds * 1000:.1f} ms\n")
        if self._closed:
            self.flush()
            return
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # a timer of an ended loop never runs
            self._timer, self._loop = loop.call_later(FLUSH_S, self._hand_over), loop

    def close(self) -> None:
        """Write the lines kept so far, and any later one at once (the server is stopping:
        a request cut off at shutdown ends after this, and the process may end before a
        timer runs)."""
        self._closed = True
        self.flush()

    def flush(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Write the lines kept so far: wait up to ``timeout`` seconds for them to be written
        (not at all while an earlier wait timed out and the writer has not written since: a
        stdout that nobody reads). True once they are."""
        self._hand_over()
        with self._cond:
            target = self._queued
            if timeout > 0 and not self._stuck:
                self._stuck = not self._cond.wait_for(lambda: self._written >= target, timeout)
            return self._written >= target

    @property
    def dropped(self) -> int:
        """Lines dropped (stdout took no lines while :data:`MAX_PENDING` characters waited)
        and not yet reported on stdout."""
        with self._cond:
            return self._dropped

    def _hand_over(self) -> None:
        """Give the lines kept so far to the writer thread; never waits for a write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        if not lines:
            return
        with self._cond:
            for line in lines:
                if self._pending_chars + len(line) > MAX_PENDING:
                    self._dropped += 1
                    continue
                self._pending.append(line)
                self._pending_chars += len(line)
                self._queued += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_forever, daemon=True,
                                                name="smysl-access-log")
                self._writer.start()
            self._cond.notify_all()

    def _write_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending or self._dropped))
                lines, self._pending, self._pending_chars = self._pending, [], 0
                dropped, self._dropped = self._dropped, 0
            text = lines + ([f"WARNING:  {dropped} access log line{'s' * (dropped != 1)} "
                             "dropped: stdout was not read\n"] if dropped else [])
            encoding = self._encoding()
            for chunk in _chunks(text, encoding):
                self._write(chunk, encoding)
            with self._cond:
                self._written += len(lines)
                self._stuck = False
                self._cond.notify_all()

    def _encoding(self) -> str:
        """The codec the stream's bytes are counted in: its own, where it names one."""
        stream = sys.stdout if self.stream is None else self.stream
        try:
            name = stream.encoding
            return codecs.lookup(name).name if isinstance(name, str) else "utf-8"
        except (AttributeError, LookupError):  # no stream, a stream of yours without one, a
            return "utf-8"  # name no codec has: _write loses the lines, not the writer

    def _write(self, text: str, encoding: str) -> None:
        """One write of whole lines (to a file, in ``encoding``); a write error loses them,
        not the server."""
        stream = sys.stdout if self.stream is None else self.stream
        if stream is None:  # pythonw: no stdout at all
            return
        try:
            if self.stream is None:
                try:
                    fd = stream.fileno()
                except (OSError, ValueError, AttributeError):
                    fd = -1  # replaced by a stream without a file (a test's capture)
                if fd >= 0:
                    # to the file itself: a thread blocked in sys.stdout.write would hold its
                    # buffer's lock, and Python aborts a process that ends with a daemon
                    # thread holding it (the reason for a full pipe is a reader gone)
                    _write_fd(fd, text.encode(encoding, "backslashreplace"))
                    return
            stream.write(text)
            stream.flush()
        except Exception:  # stdout closed or gone, or a stream of yours that fails: the
            pass  # lines are lost, the writer (and every later line) is not


def _write_fd(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``, waiting while the file is non-blocking and full."""
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            time.sleep(0.01)


def _chunks(lines: list[str], encoding: str) -> list[str]:
    """Whole lines joined into pieces of at most :data:`CHUNK` bytes once encoded as
    :meth:`AccessLog._write` encodes them (a path of raw UTF-8 is 2 bytes a Cyrillic
    letter); a longer line is a piece of its own."""
    chunks: list[list[str]] = [[]]
    size = 0
    for line in lines:
        n = len(line) if line.isascii() else len(line.encode(encoding, "backslashreplace"))
        if chunks[-1] and size + n > CHUNK:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += n
    return ["".join(c) for c in chunks if c]
