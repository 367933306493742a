"""smysl's access log: uvicorn's line per request, kept in memory and written in chunks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from server_helpers import free_port

from smysl.server import access_log
from smysl.server.access_log import AccessLog


def scope(path: str = "/embed", query: bytes = b"", client: tuple[str, int] | None = (
        "10.0.0.7", 51234), method: str = "POST") -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "query_string": query,
            "raw_path": quote(path).encode("ascii"),  # as a client sends it: percent-encoded
            "root_path": "", "http_version": "1.1", "client": client}


def test_lines_are_uvicorns_with_the_time_and_wait_for_the_flush() -> None:
    out = io.StringIO()
    log = AccessLog(out)

    async def main() -> None:
        log.add(scope(), 200, 0.0031)
        log.add(scope("/v1/embeddings", b"a=1&b=%20"), 429, 0.25)
        log.add(scope("/api/embed", client=None), 499, 1.0)
        log.add(scope("/путь с пробелом", method="GET"), 404, 0.0)
        # a key a client put in the query is not written (a review's: api_key=... was)
        log.add(scope("/nope", b"api_key=S3CRET&x=1&Access_Token=t0k&tokenizer=a&keyword=b"
                      b"&author=c&X-Amz-Signature=d&sig=e&api%6Bey=f&k=v", method="GET"),
                404, 0.0)
        assert out.getvalue() == ""  # nothing written on the request path
        await asyncio.sleep(access_log.FLUSH_S * 3)

    asyncio.run(main())
    assert out.getvalue().splitlines() == [
        'INFO:     10.0.0.7:51234 - "POST /embed HTTP/1.1" 200 OK 3.1 ms',
        'INFO:     10.0.0.7:51234 - "POST /v1/embeddings?a=1&b=%20 HTTP/1.1" 429 Too Many '
        "Requests 250.0 ms",
        'INFO:      - "POST /api/embed HTTP/1.1" 499 1000.0 ms',
        'INFO:     10.0.0.7:51234 - "GET /%D0%BF%D1%83%D1%82%D1%8C%20%D1%81%20%D0%BF%D1%80%D0%BE'
        '%D0%B1%D0%B5%D0%BB%D0%BE%D0%BC HTTP/1.1" 404 Not Found 0.0 ms',
        'INFO:     10.0.0.7:51234 - "GET /nope?api_key=***&x=1&Access_Token=***&tokenizer=a&'
        'keyword=b&author=c&X-Amz-Signature=***&sig=***&api%6Bey=***&k=v HTTP/1.1" 404 Not '
        'Found 0.0 ms']


class Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


@pytest.mark.parametrize("name", ["embed", "путь" * 20])
def test_a_flush_writes_whole_lines_in_chunks_below_a_pipes_atomic_size(name: str) -> None:
    """``--workers`` processes share stdout: each write is whole lines of <= CHUNK bytes,
    also where a client sent a path of raw UTF-8 (its characters were counted: 2 bytes
    each, writes of 6,000 bytes)."""
    out = Writes()
    log = AccessLog(out)

    def raw(path: str) -> dict[str, object]:
        return {**scope(path), "raw_path": path.encode()}

    async def main() -> None:
        for i in range(500):
            log.add(raw(f"/{name}/{i}"), 200, 0.001)
        log.flush()

    asyncio.run(main())
    assert len(out.writes) > 1
    assert all(len(w.encode()) <= access_log.CHUNK and w.endswith("\n") for w in out.writes)
    lines = "".join(out.writes).splitlines()
    assert [x.split('"')[1].split()[1].rsplit("/", 1)[1] for x in lines] == \
        [str(i) for i in range(500)]  # each line once, in order (the path shown as uvicorn does)


@pytest.mark.parametrize("error", [OSError(32, "Broken pipe"), ValueError("closed file"),
                                   RuntimeError("a stream of yours that fails")])
def test_a_broken_stdout_loses_the_lines_not_the_server(error: Exception) -> None:
    """A write that fails loses its lines; the writer lives on and writes later ones."""
    class Broken(io.StringIO):
        failed = False

        def write(self, s: str) -> int:
            if not self.failed:
                self.failed = True
                raise error
            return super().write(s)

    out = Broken()
    log = AccessLog(out)

    async def main() -> None:
        log.add(scope("/lost"), 200, 0.001)
        assert log.flush()  # written or lost: not waiting
        log.add(scope("/kept"), 200, 0.001)  # goes on logging
        assert log.flush()

    asyncio.run(main())
    assert out.failed and [x.split('"')[1] for x in out.getvalue().splitlines()] == [
        "POST /kept HTTP/1.1"]


@pytest.mark.parametrize(("client", "status", "query"), [
    (("10.0.0.7", 51234), 200, b""), (None, 429, b"a=1"), (("::1", 80), 404, b""),
    (("127.0.0.1", 9), 503, b"q=%20x")])
def test_the_line_is_uvicorns_without_colours_plus_the_time(
        client: tuple[str, int] | None, status: int, query: bytes) -> None:
    """What uvicorn's own access formatter writes for the same request, then the time."""
    import logging

    from uvicorn.logging import AccessFormatter
    from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

    sc = {**scope("/root/embed", query, client), "root_path": "/root"}  # uvicorn's path has it
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               (get_client_addr(sc), "POST",  # type: ignore[arg-type]
                                get_path_with_query_string(sc), "1.1", status), None)
    want = AccessFormatter('%(levelprefix)s %(client_addr)s - "%(request_line)s" '
                           "%(status_code)s", use_colors=False).format(record)
    out = io.StringIO()
    log = AccessLog(out)

    async def main() -> None:
        log.add(sc, status, 0.0125)
        log.flush()

    asyncio.run(main())
    assert out.getvalue() == f"{want} 12.5 ms\n"


def test_after_close_a_line_is_written_at_once() -> None:
    """A request cut off at shutdown ends after the lifespan closed the log: no timer is
    left to write its line (the process may end first)."""
    out = io.StringIO()
    log = AccessLog(out)

    async def main() -> None:
        log.add(scope(), 200, 0.001)
        log.close()
        assert out.getvalue().count("\n") == 1
        log.add(scope(), 503, 0.001)
        assert out.getvalue().count("\n") == 2

    asyncio.run(main())


def test_a_log_outliving_its_loop_still_writes_on_the_next() -> None:
    out = io.StringIO()
    log = AccessLog(out)

    async def add() -> None:
        log.add(scope(), 200, 0.001)

    asyncio.run(add())  # its timer dies with this loop
    before = out.getvalue()

    async def again() -> None:
        log.add(scope(), 200, 0.001)
        await asyncio.sleep(access_log.FLUSH_S * 3)

    asyncio.run(again())
    assert before == "" and out.getvalue().count("\n") == 2


@pytest.mark.parametrize("arrangement", ["create_app", "serving_app"])
def test_a_crash_in_a_fastapi_route_is_logged_with_the_status_sent(arrangement: str) -> None:
    """The 500-class answer of an unexpected exception comes from FastAPI's outermost layer,
    around the edge middleware (``create_app``) or behind it (``serving_app``, what ``smysl
    serve`` runs): the line says what the client got, not 499, and the body is the API's
    error shape."""
    from fastapi.testclient import TestClient
    from server_helpers import HashEmbedder

    from smysl.server import ServerConfig
    from smysl.server.app import create_app, serving_app

    out = io.StringIO()
    log = AccessLog(out)
    if arrangement == "create_app":
        front = app = create_app(HashEmbedder(), ServerConfig(), access_log=log)
    else:
        front, app = serving_app(HashEmbedder(), ServerConfig(), access_log=log)

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(front, raise_server_exceptions=False) as c:
        r = c.get("/v1/boom")
        ok = c.post("/embed", json={"inputs": "a"})
    assert ok.status_code == 200
    assert r.json()["error"]["message"] == "internal error: RuntimeError", r.text
    lines = out.getvalue().splitlines()
    assert [x.split('"')[1:] for x in lines] == [
        ["GET /v1/boom HTTP/1.1", f" {r.status_code} Internal Server Error "
         f"{lines[0].rsplit(' ', 2)[1]} ms"],
        ["POST /embed HTTP/1.1", f" 200 OK {lines[1].rsplit(' ', 2)[1]} ms"]]
    assert r.status_code == 500


def test_a_head_request_is_logged_as_head(tiny) -> None:  # type: ignore[no-untyped-def]
    """The server routes HEAD as GET; the log says what the client sent."""
    from fastapi.testclient import TestClient

    from smysl.server import ServerConfig
    from smysl.server.app import create_app

    out = io.StringIO()
    log = AccessLog(out)
    with TestClient(create_app(tiny, ServerConfig(), access_log=log)) as c:
        assert c.head("/health").status_code == 200
        assert c.get("/health").status_code == 200
    log.flush()
    assert [x.split('"')[1] for x in out.getvalue().splitlines()] == [
        "HEAD /health HTTP/1.1", "GET /health HTTP/1.1"]


def test_a_stdout_that_takes_nothing_never_blocks_the_loop_and_drops_are_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader gone (a full pipe) used to block the event loop in the write, and every
    request with it. The writes are a thread's: lines are kept up to MAX_PENDING characters,
    then dropped and counted; once stdout takes lines again, one line says how many."""
    monkeypatch.setattr(access_log, "MAX_PENDING", 2000)
    release = threading.Event()

    class Blocked(Writes):
        def write(self, s: str) -> int:
            release.wait(20)  # (the old code blocked the loop here)
            return super().write(s)

    out = Blocked()
    log = AccessLog(out)
    line = len('INFO:     10.0.0.7:51234 - "POST /embed/0000 HTTP/1.1" 200 OK 1.0 ms\n')

    async def main() -> None:
        for i in range(200):
            log.add(scope(f"/embed/{i:04}"), 200, 0.001)
            if i % 20 == 19:
                start = time.monotonic()
                await asyncio.sleep(access_log.FLUSH_S * 1.5)  # the timer hands them over
                assert time.monotonic() - start < access_log.FLUSH_S * 1.5 + 1
        start = time.monotonic()
        assert not log.flush(timeout=0.2)  # not written: waited its timeout
        assert not log.flush()  # a second wait does not wait while the writer is stuck
        assert time.monotonic() - start < 1

    asyncio.run(main())
    # the writer took the first 20 lines and blocks in their write; 2000 characters more wait
    kept = 20 + 2000 // line
    assert log.dropped == 200 - kept
    release.set()
    deadline = time.monotonic() + 10
    while not log.flush():  # at once when the writer has written since
        assert time.monotonic() < deadline
        time.sleep(0.01)
    lines = "".join(out.writes).splitlines()
    assert [x.split('"')[1] for x in lines[:-1]] == [
        f"POST /embed/{i:04} HTTP/1.1" for i in range(kept)]
    assert lines[-1] == f"WARNING:  {200 - kept} access log lines dropped: stdout was not read"
    assert log.dropped == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ")
def test_smysl_serve_answers_while_nobody_reads_its_stdout(tiny_dir: Path) -> None:
    """``smysl serve --workers 2`` with stdout a pipe nobody reads (4 KiB: ~60 lines): every
    request is answered, no worker is taken for stalled; the lines come once it is read."""
    import fcntl
    import os
    import subprocess

    import httpx

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ
    port = free_port()
    err = tempfile.TemporaryFile()  # noqa: SIM115 - read after the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "smysl.cli", "serve", "--model", str(tiny_dir), "--port",
         str(port), "--device", "cpu", "--workers", "2", "--threads", "1",
         "--worker-stall-s", "2"],
        cwd=Path(__file__).resolve().parents[2], stdout=write_end, stderr=err)
    os.close(write_end)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with httpx.Client(timeout=10) as client:
            codes = [client.get(f"{url}/health?n={i}").status_code for i in range(300)]
            time.sleep(3)  # longer than --worker-stall-s
            codes += [client.post(f"{url}/embed", json={"inputs": "привет"}).status_code
                      for _ in range(20)]
        assert codes == [200] * 320
        out = b""
        os.set_blocking(read_end, False)
        deadline = time.monotonic() + 30
        while out.count(b"GET /health?n=") < 300 or out.count(b"POST /embed") < 20:
            assert time.monotonic() < deadline, out[-2000:]
            with contextlib.suppress(BlockingIOError):
                out += os.read(read_end, 1 << 16)
            time.sleep(0.01)
        got = re.findall(rb"GET /health\?n=(\d+) HTTP/1.1\" 200 OK", out)
        assert sorted(int(x) for x in got) == list(range(300))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(read_end)
    err.seek(0)
    log = err.read().decode(errors="replace")
    assert proc.returncode == 0 and "its event loop has not run" not in log, log[-3000:]


def test_a_stream_naming_no_codec_keeps_the_writer() -> None:
    """A stream whose ``encoding`` names no codec: counting a non-ASCII line's bytes raised in
    the writer thread, which died; every later line was lost and every flush timed out."""
    class Odd(io.StringIO):
        encoding = "no-such-codec"  # type: ignore[assignment]

    out = Odd()
    log = AccessLog(out)

    async def main() -> None:
        log.add({**scope("/é"), "raw_path": "/é".encode()}, 200, 0.001)
        log.add(scope("/plain"), 200, 0.001)
        assert log.flush(2.0)

    asyncio.run(main())
    assert out.getvalue().count("\n") == 2 and "/plain" in out.getvalue()
