"""A real uvicorn server on 127.0.0.1 (free port) with real clients: the official ``openai`` SDK
(float and base64) and plain HTTP for the Ollama and TEI routes; auth; graceful shutdown."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import numpy as np
import pytest
from server_helpers import HashEmbedder, free_port

from smysl.server import ServerConfig, create_app

TEXTS = ["Привет, мир!", "The quick brown fox jumps over the lazy dog.", "a" * 40]


@pytest.fixture(scope="module")
def live(tiny_dir):  # type: ignore[no-untyped-def]
    """As ``smysl serve`` runs a local model: the engine in a child process (same thread count
    as this process, so its vectors equal the in-process ``tiny`` fixture's bit for bit)."""
    import torch
    from server_helpers import live_server

    from smysl import Embedder

    model = Embedder.load(str(tiny_dir), device="cpu", threads=torch.get_num_threads(),
                          process=True)
    try:
        with live_server(model, api_key="sekret", served_name="qwen3-embedding:0.6b",
                         max_wait_ms=20, token_ids=True) as url:
            yield url
    finally:
        model.close()


def test_concurrent_mixed_requests_share_batches_and_stay_exact(live, tiny) -> None:  # type: ignore[no-untyped-def]
    """Text and token-id inputs, dimensions, normalize=false, truncation flags and all three
    APIs coalesce into shared batches; every response is its own request's exact vectors."""
    import asyncio
    import re

    texts = [f"request {i}: " + "слово " * (i % 6) + "word " * (i % 4) for i in range(32)]
    ids = tiny.tokenize(texts)
    auth = {"Authorization": "Bearer sekret"}
    cases = []
    for i, t in enumerate(texts):
        kind = i % 4
        if kind == 0:
            cases.append(("/v1/embeddings", {"input": t, "dimensions": 32},
                          lambda r: r.json()["data"][0]["embedding"],
                          tiny.embed([t], dimensions=32)))
        elif kind == 1:
            cases.append(("/v1/embeddings", {"input": [ids[i]]},
                          lambda r: r.json()["data"][0]["embedding"], tiny.embed([t])))
        elif kind == 2:
            cases.append(("/embed", {"inputs": t, "normalize": False, "truncate": True},
                          lambda r: r.json()[0],
                          tiny.embed_token_ids([ids[i]], normalize=False)))
        else:
            cases.append(("/api/embed", {"input": t, "truncate": False},
                          lambda r: r.json()["embeddings"][0], tiny.embed([t])))

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live, headers=auth, timeout=60) as c:
            before = (await c.get("/metrics")).text
            rs = await asyncio.gather(*[c.post(path, json=body) for path, body, _, _ in cases])
            after = (await c.get("/metrics")).text
        count = re.compile(r"^smysl_batch_requests_count (\S+)$", re.M)
        batches = float(count.search(after)[1]) - float(count.search(before)[1])  # type: ignore[index]
        assert batches < len(cases)  # requests with different options shared batches
        return rs

    for r, (_, _, pick, want) in zip(asyncio.run(go()), cases, strict=True):
        assert r.status_code == 200, r.text
        assert np.array_equal(np.array(pick(r), np.float32), want[0])


def test_openai_sdk_float_and_base64(live, tiny) -> None:  # type: ignore[no-untyped-def]
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{live}/v1", api_key="sekret", max_retries=0)
    # The SDK asks for base64 by default and decodes it itself.
    res = client.embeddings.create(model="qwen3-embedding:0.6b", input=TEXTS)
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    assert np.array_equal(got, tiny.embed(TEXTS))
    assert res.usage.prompt_tokens == sum(tiny.count_tokens(TEXTS))
    # a base URL without /v1 reaches the same route, as on TEI (/embeddings)
    bare = openai.OpenAI(base_url=live, api_key="sekret", max_retries=0)
    res = bare.embeddings.create(model="qwen3-embedding:0.6b", input=TEXTS)
    assert np.array_equal(np.array([d.embedding for d in res.data], np.float32), got)
    with pytest.raises(openai.NotFoundError):  # in OpenAI's error shape
        bare.embeddings.create(model="text-embedding-3-large", input="x")
    res = client.embeddings.create(model="Qwen/Qwen3-Embedding-0.6B", input=TEXTS[0],
                                   encoding_format="float", dimensions=32)
    assert np.array_equal(np.array(res.data[0].embedding, np.float32),
                          tiny.embed(TEXTS[:1], dimensions=32)[0])
    # extensions travel through extra_body
    res = client.embeddings.create(model="qwen3-embedding:0.6b", input=TEXTS,
                                   extra_body={"input_type": "query"})
    assert np.array_equal(np.array([d.embedding for d in res.data], np.float32),
                          tiny.embed_queries(TEXTS))
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-large", input="x")
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.embeddings.create(model="qwen3-embedding:0.6b", input=[""])
    bad = openai.OpenAI(base_url=f"{live}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="qwen3-embedding:0.6b", input="x")


def test_plain_http_ollama_and_tei(live, tiny) -> None:  # type: ignore[no-untyped-def]
    auth = {"Authorization": "Bearer sekret"}
    with httpx.Client(base_url=live, headers=auth, timeout=30) as c:
        r = c.post("/api/embed", json={"model": "qwen3-embedding:0.6b", "input": TEXTS})
        assert np.array_equal(np.array(r.json()["embeddings"], np.float32), tiny.embed(TEXTS))
        r = c.post("/api/embeddings", json={"model": "qwen3-embedding", "prompt": TEXTS[0]})
        assert np.array_equal(np.array(r.json()["embedding"], np.float32),
                              tiny.embed(TEXTS[:1])[0])
        assert c.get("/api/tags").json()["models"][0]["name"] == "qwen3-embedding:0.6b"
        r = c.post("/embed", json={"inputs": TEXTS, "dimensions": 40})
        assert np.array_equal(np.array(r.json(), np.float32), tiny.embed(TEXTS, dimensions=40))
        assert float(r.headers["x-compute-time"]) >= 0
        assert c.post("/tokenize", json={"inputs": "hi"}).status_code == 200
        assert c.get("/info").json()["model_id"] == "qwen3-embedding:0.6b"
        assert "smysl_requests_total" in c.get("/metrics").text
        r = c.head("/api/tags")  # HEAD wherever GET is (curl -I, wget --spider)
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] != "0"
        r = c.delete("/embed")
        assert r.status_code == 405 and r.headers["allow"] == "POST", r.headers
    with httpx.Client(base_url=live, timeout=30) as anon:
        assert anon.get("/health").status_code == 200  # probes need no key
        # the Ollama client's heartbeat (HEAD /), TEI's GET / and SageMaker's /ping
        for method, path in (("HEAD", "/"), ("GET", "/"), ("GET", "/ping"), ("HEAD", "/health")):
            r = anon.request(method, path)
            assert (r.status_code, r.content) == (200, b""), (method, path, r)
        assert anon.post("/", json={"inputs": "x"}).status_code == 401  # TEI's embed route
        assert anon.head("/api/tags").status_code == 401
        assert anon.get("/openapi.json").status_code == 200
        r = anon.post("/api/embed", json={"input": "x"})
        assert r.status_code == 401 and "API key" in r.json()["error"]
        r = anon.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer sekre"})
        assert r.status_code == 401 and r.json()["error_type"] == "Validation"
        assert anon.get("/metrics").status_code == 401


def test_graceful_shutdown_finishes_in_flight_request() -> None:
    from live_http import uvicorn_thread

    backend = HashEmbedder()
    backend.gate.clear()
    port = free_port()
    app = create_app(backend, ServerConfig(port=port))
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": "in flight"},
                                 timeout=30)

    with uvicorn_thread(app, port) as (server, thread):
        caller = threading.Thread(target=call)
        caller.start()
        assert backend.entered.wait(10)
        server.should_exit = True  # what SIGTERM does
        time.sleep(0.2)
        backend.gate.set()
        caller.join(20)
        thread.join(20)
        assert not thread.is_alive()
    assert result["r"].status_code == 200
    assert np.array_equal(np.array(result["r"].json(), np.float32), backend.embed(["in flight"]))
    with pytest.raises(httpx.ConnectError):  # and it really stopped
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_request_of_a_disconnected_client_is_not_computed() -> None:
    import re
    import socket

    from server_helpers import live_server

    backend = HashEmbedder()
    backend.gate.clear()
    with live_server(backend) as url:
        port = int(url.rsplit(":", 1)[1])
        busy = threading.Thread(target=lambda: httpx.post(f"{url}/embed",
                                                          json={"inputs": "busy"}, timeout=30))
        busy.start()
        assert backend.entered.wait(10)
        body = b'{"inputs": "never computed"}'
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            deadline = time.monotonic() + 10
            while "smysl_queue_depth 1.0" not in httpx.get(f"{url}/metrics").text:
                assert time.monotonic() < deadline, "request never queued"
                time.sleep(0.02)
        # the socket is closed: the queued request's client is gone
        time.sleep(0.1)
        backend.gate.set()
        busy.join(20)
        deadline = time.monotonic() + 10
        while not re.search(r'dropped_requests_total\{reason="disconnected"\} 1',
                            text := httpx.get(f"{url}/metrics").text):
            assert time.monotonic() < deadline, text
            time.sleep(0.02)
    assert [t for call in backend.calls for t in call] == ["busy"]


def test_a_dead_engine_process_is_restarted(tiny_dir) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item 8: a killed engine process used to leave the server answering 503 for
    ever; now requests in the dead window get the documented 503 (with Retry-After) and the
    engine is back within seconds, with the same vectors."""
    import os
    import re
    import signal

    from server_helpers import live_server

    from smysl import Embedder

    model = Embedder.load(str(tiny_dir), device="cpu", process=True)
    try:
        with live_server(model) as url:
            before = httpx.post(f"{url}/embed", json={"inputs": "fine"})
            assert before.status_code == 200
            first = model.engine.pid
            os.kill(first, signal.SIGKILL)  # e.g. the OOM killer
            t0 = time.monotonic()
            r = httpx.post(f"{url}/v1/embeddings", json={"input": "after"}, timeout=30)
            assert r.status_code == 503, r.text
            assert "engine process" in r.json()["error"]["message"]
            assert int(r.headers["Retry-After"]) >= 1
            r = httpx.get(f"{url}/health")
            assert r.status_code == 503 and r.json()["error_type"] == "Unhealthy"
            while httpx.get(f"{url}/health").status_code != 200:
                assert time.monotonic() - t0 < 60, "the engine did not come back"
                time.sleep(0.1)
            assert model.engine.pid != first
            after = httpx.post(f"{url}/embed", json={"inputs": "fine"})
            assert after.status_code == 200 and after.json() == before.json()
            text = httpx.get(f"{url}/metrics").text
            assert re.search(r"^smysl_backend_down_total 1\.0$", text, re.M)
            assert re.search(r"^smysl_backend_recovered_total 1\.0$", text, re.M)
    finally:
        model.close()


def test_a_port_in_use_is_one_line_and_status_2(tiny_dir) -> None:  # type: ignore[no-untyped-def]
    """One process, a port another holds: uvicorn's bind printed a traceback and exited 3,
    the status that asks a supervisor to restart the server (so it would, in a loop)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "smysl.cli", "serve", "--model",
                               str(tiny_dir), "--device", "cpu", "--host", "127.0.0.1",
                               "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stalled_upload_does_not_hold_a_stop(tiny_dir) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM while a client has sent part of a body and then nothing: that request was
    waited for through the whole grace period (30 s). Nothing of it has run, so it is answered
    503 with a Retry-After about a second after the stop (STOP_IDLE_S), and the server exits
    0; a body still arriving steadily is read to its end and answered, as a request in flight
    (test_graceful_shutdown_finishes_in_flight_request)."""
    import signal
    import socket
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "smysl.cli", "serve", "--model",
                             str(tiny_dir), "--device", "cpu", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        body = b'{"inputs": "' + b"a" * 30 + b'"}'
        head = (b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n" % len(body))

        def answer(s: socket.socket) -> bytes:
            got = b""
            with contextlib.suppress(TimeoutError):
                while b"\r\n\r\n" not in got and (part := s.recv(4096)):
                    got += part
            return got

        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled, \
                socket.create_connection(("127.0.0.1", port), timeout=10) as steady:
            for s in (stalled, steady):
                s.sendall(head + body[:12])
            time.sleep(0.3)  # the parts are read, the rest awaited
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            for i in range(12, len(body), 6):  # a part every 0.4 s: read to its end
                time.sleep(0.4)
                steady.sendall(body[i : i + 6])
            got = answer(stalled)
            assert got.startswith(b"HTTP/1.1 503"), got[:300]
            assert b"retry-after" in got.lower() and time.monotonic() - t < 5
            assert answer(steady).startswith(b"HTTP/1.1 200")
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - t < 15
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_huge_request_head_is_refused_before_it_stalls_the_server() -> None:
    """httptools took a header of any size, building its value piece by piece: a 100 MB
    header cost ~9 s of the event loop's CPU (growing with the square of its size), and every
    client waited, no key needed. Past 64 KiB the head is refused with 431 and the connection
    closed; heads of ordinary size, split into many pieces, pass."""
    import socket

    from live_http import uvicorn_thread

    port = free_port()
    app = create_app(HashEmbedder(), ServerConfig(port=port, api_key="sekret"))
    with uvicorn_thread(app, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ")
            t = time.monotonic()
            got = b""
            try:
                for _ in range(160):  # 10 MiB in 64 KiB pieces, unless refused first
                    s.sendall(b"a" * 65536)
                    time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                pass
            with contextlib.suppress(ConnectionResetError):
                got = s.recv(4096)
            assert got.startswith(b"HTTP/1.1 431"), got[:200]
            assert time.monotonic() - t < 5
        # a head of 8 KiB sent a byte at a time, and the next request on the connection
        head = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-B: " + b"b" * 8192 + b"\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for i in range(0, len(head), 512):
                s.sendall(head[i : i + 512])
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            s.sendall(head)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        r = httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": "x" * 300_000},
                       headers={"Authorization": "Bearer sekret"}, timeout=30)
        assert r.status_code == 200  # a large body is no head
