"""The server's edges under faults and with real clients (issue 11 items 8, 10, 11): exit when
the backend stays down, JSON answers for requests cut off at shutdown, ``listening`` only once
bound, Ollama bodies without Content-Type, TEI's ``POST /`` for ``huggingface_hub``."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_helpers import HashEmbedder, free_port, live_server

from smysl.rerank import BaseReranker
from smysl.server import ServerConfig, create_app, serve
from smysl.server.app import EXIT_BACKEND_DOWN


class Flaky(HashEmbedder):
    """A backend whose health the test decides."""

    up = True

    @property
    def healthy(self) -> bool:
        return self.up


def run_serve(embedder: Any, config: ServerConfig, ready: Any, **options: Any
              ) -> dict[str, Any]:
    """``serve`` in a thread (as ``smysl serve`` runs it); the result dict gets its code."""
    out: dict[str, Any] = {}

    def main() -> None:
        out["code"] = serve(embedder, config, ready=ready, **options)

    out["thread"] = threading.Thread(target=main, daemon=True)
    out["thread"].start()
    return out


def test_listening_is_reported_once_bound_and_a_down_backend_exits_nonzero() -> None:
    """issue 11 items 8 and 11: ``ready`` fires only once the port accepts connections; a
    backend unhealthy for ``unhealthy_exit_s`` makes ``serve`` stop with a non-zero code."""
    backend = Flaky()
    seen: dict[str, Any] = {}

    def ready(host: str, port: int) -> None:
        with socket.create_connection((host, port), timeout=2):  # bound and accepting
            seen["bound"] = (host, port)
        backend.up = False

    run = run_serve(backend, ServerConfig(port=0, unhealthy_exit_s=0.5), ready)
    run["thread"].join(20)
    assert not run["thread"].is_alive()
    assert seen["bound"][0] == "127.0.0.1" and seen["bound"][1] > 0  # the real port of port 0
    assert run["code"] == EXIT_BACKEND_DOWN != 0


def test_serve_exits_when_the_engine_restarts_are_exhausted(tiny_dir) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item 8: the server used to stay up answering 503 for ever after its engine
    died; with no restarts left it exits non-zero so a supervisor restarts it."""
    import os
    import signal

    from smysl import Embedder

    model = Embedder.load(str(tiny_dir), device="cpu", process=True)
    model.engine.max_restarts = 0  # type: ignore[attr-defined]
    try:
        bound = threading.Event()
        run = run_serve(model, ServerConfig(port=0, unhealthy_exit_s=1.0),
                        lambda host, port: bound.set())
        assert bound.wait(20)
        pid = model.engine.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        run["thread"].join(30)
        assert not run["thread"].is_alive() and run["code"] == EXIT_BACKEND_DOWN
    finally:
        model.close()


def test_requests_cut_off_at_shutdown_get_json_503() -> None:
    """issue 11 item 8: requests still running when the grace period ends used to get
    uvicorn's plain-text 500; now each API's JSON error shape, 503."""
    from live_http import uvicorn_thread

    backend = HashEmbedder()
    backend.gate.clear()
    port = free_port()
    app = create_app(backend, ServerConfig(port=port, max_wait_ms=0))
    results: dict[str, httpx.Response] = {}
    calls = [("openai", "/v1/embeddings", {"input": "a"}), ("ollama", "/api/embed",
                                                           {"input": "b"}),
             ("tei", "/embed", {"inputs": "c"})]

    def call(name: str, path: str, body: dict[str, str]) -> None:
        results[name] = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=30)

    with uvicorn_thread(app, port, grace_s=1, log_level="critical") as (server, thread):
        callers = [threading.Thread(target=call, args=c) for c in calls]
        callers[0].start()
        assert backend.entered.wait(10)
        for c in callers[1:]:
            c.start()
        deadline = time.monotonic() + 10
        while app.state.service.batcher.depth < 2:  # one computes (held), two queue
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.should_exit = True  # SIGTERM; the held batch outlives the 1 s grace period
        for c in callers:
            c.join(20)
        backend.gate.set()
        thread.join(20)
    assert {k: r.status_code for k, r in results.items()} == {"openai": 503, "ollama": 503,
                                                              "tei": 503}
    assert results["openai"].json()["error"]["type"] == "server_error"
    assert "shut down" in results["ollama"].json()["error"]
    assert results["tei"].json()["error_type"] == "Unhealthy"


@pytest.fixture(scope="module")
def live(tiny):  # type: ignore[no-untyped-def]
    with live_server(tiny, max_wait_ms=5) as url:
        yield url


def test_ollama_accepts_bodies_without_json_content_type(live, tiny) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item 10: Ollama's documented ``curl URL/api/embed -d '{...}'`` (curl sends
    form-urlencoded) and a body with no Content-Type at all used to get 4xx."""
    body = '{"model": "m", "input": ["Why is the sky blue?", "second"]}'
    want = tiny.embed(["Why is the sky blue?", "second"])
    curl = shutil.which("curl")
    if curl is not None:
        out = subprocess.run([curl, "-s", f"{live}/api/embed", "-d", body], capture_output=True,
                             timeout=30, check=True).stdout
        got = np.array(httpx.Response(200, content=out).json()["embeddings"], np.float32)
        assert np.array_equal(got, want)
    with httpx.Client(timeout=30) as c:
        req = c.build_request("POST", f"{live}/api/embed", content=body.encode())
        assert "content-type" not in req.headers
        r = c.send(req)
        assert r.status_code == 200 and np.array_equal(
            np.array(r.json()["embeddings"], np.float32), want)
        r = c.post(f"{live}/api/embeddings", content=b'{"prompt": "hi"}',
                   headers={"Content-Type": "text/plain"})
        assert r.status_code == 200


def test_tei_root_and_invocations_serve_huggingface_hub(live, tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item 10: TEI serves an embedding model at ``POST /`` (and ``/invocations``);
    ``huggingface_hub.InferenceClient(model=URL).feature_extraction`` posts there (it got 404)."""
    hub = pytest.importorskip("huggingface_hub")
    # huggingface_hub reads $HF_HUB_OFFLINE once, at import: imported first under the
    # provider tests' offline setting, it refused this loopback server after them
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    texts = ["Привет, мир!", "The quick brown fox"]
    client = hub.InferenceClient(model=live)
    got = client.feature_extraction(texts[0])
    assert np.array_equal(np.asarray(got, np.float32).reshape(1, -1), tiny.embed(texts[:1]))
    # its sentence_similarity posts a /similarity body to the URL too (it got 422)
    sims = client.sentence_similarity(texts[0], [texts[1], texts[0]])
    v = tiny.embed([texts[0], texts[1], texts[0]])
    np.testing.assert_allclose(sims, v[1:] @ v[0], atol=1e-6)
    for path in ("/", "/invocations"):
        r = httpx.post(f"{live}{path}", json={"inputs": texts, "dimensions": 32}, timeout=30)
        assert r.status_code == 200
        assert np.array_equal(np.array(r.json(), np.float32), tiny.embed(texts, dimensions=32))


@pytest.mark.parametrize(("access_log", "log_config"), [(True, False), (False, False),
                                                       (True, True)])
def test_access_log_can_be_turned_off(access_log: bool, log_config: bool,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A line per request on stdout, smysl's (uvicorn's access logger stays off: no line
    twice); ``--no-access-log``: none. The line is written by the time ``serve`` returns.
    A caller who passes uvicorn a ``log_config`` gets uvicorn's access logger instead."""
    import copy
    import logging

    from uvicorn.config import LOGGING_CONFIG

    seen: dict[str, Any] = {}
    bound = threading.Event()

    def ready(host: str, port: int) -> None:
        seen["uvicorn logs"] = logging.getLogger("uvicorn.access").hasHandlers()
        seen["url"] = f"http://{host}:{port}"
        bound.set()

    backend = Flaky()
    options = {"log_config": copy.deepcopy(LOGGING_CONFIG)} if log_config else {}
    run = run_serve(backend, ServerConfig(port=0, unhealthy_exit_s=0.5, access_log=access_log),
                    ready, **options)
    try:
        assert bound.wait(20)
        r = httpx.post(f"{seen['url']}/embed?x=1", json={"inputs": "привет"}, timeout=10)
        assert r.status_code == 200
    finally:
        backend.up = False  # serve() exits on its own
        run["thread"].join(20)
    assert seen["uvicorn logs"] is log_config
    lines = [x for x in capsys.readouterr().out.splitlines() if '"POST /embed' in x]
    if access_log:
        assert len(lines) == 1, lines
        ms = "" if log_config else r" \d+\.\d ms"
        assert re.fullmatch(r'INFO: {5}127\.0\.0\.1:\d+ - "POST /embed\?x=1 HTTP/1\.1" 200 OK'
                            + ms, lines[0]), lines[0]
    else:
        assert lines == []


class FlakyReranker(BaseReranker):
    """A remote-like reranker (no token level) whose health the test decides."""

    name, backend = "flaky-reranker", "test"
    up = True
    remote = True

    @property
    def healthy(self) -> bool:
        return self.up

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        if not self.up:
            raise ConnectionError("upstream gone")
        return np.array([float(len(d)) for d in documents])


def test_a_reranker_down_beside_a_model_is_seen_by_health_metrics_and_exit() -> None:
    """A reranker served beside an embedding model used to go unseen: /health 200,
    ``smysl_backend_up`` 1 and no exit while its engine stayed down (its routes said 503)."""
    reranker = FlakyReranker()
    with TestClient(create_app(HashEmbedder(), ServerConfig(), reranker=reranker)) as c:
        assert c.get("/health").status_code == 200
        reranker.up = False
        r = c.get("/health")
        assert r.status_code == 503 and "flaky-reranker" in r.json()["error"]
        assert int(r.headers["Retry-After"]) >= 1
        assert c.post("/rerank", json={"query": "q", "texts": ["a"]}).status_code == 503
        assert c.post("/v1/embeddings", json={"input": "still served"}).status_code == 200
        text = c.get("/metrics").text
        assert re.search(r"^smysl_rerank_backend_up 0\.0$", text, re.M)
        assert re.search(r"^smysl_backend_up 1\.0$", text, re.M)  # the embedder is fine
        reranker.up = True
        assert c.get("/health").status_code == 200
        text = c.get("/metrics").text
        assert re.search(r"^smysl_rerank_backend_recovered_total 1\.0$", text, re.M)

    reranker.up = True

    def ready(host: str, port: int) -> None:
        reranker.up = False

    run = run_serve(HashEmbedder(), ServerConfig(port=0, unhealthy_exit_s=0.5), ready,
                    reranker=reranker)
    run["thread"].join(20)
    assert not run["thread"].is_alive() and run["code"] == EXIT_BACKEND_DOWN


def test_default_exit_waits_for_a_local_backend_never_for_a_remote_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``serve`` from Python with the default settings exited 60 s into a remote API's
    outage (the CLI alone knew to wait); and a local model beside a remote reranker never
    exited, whatever its engine did. Now each backend by its kind (``remote``: a provider's,
    a remote reranker's; a backend of one's own is local, whatever its info says)."""
    from smysl.providers.openai import OpenAIProvider
    from smysl.providers.rerankers import CohereReranker
    from smysl.server import health

    assert OpenAIProvider.remote and CohereReranker.remote and not Flaky.remote
    monkeypatch.setattr(health, "LOCAL_EXIT_S", 0.5)
    reranker, model = FlakyReranker(), Flaky()

    def ready(host: str, port: int) -> None:
        reranker.up = False

    run = run_serve(model, ServerConfig(port=0), ready, reranker=reranker)
    time.sleep(2.0)  # four times the local limit: the remote reranker's outage is no exit
    assert run["thread"].is_alive()
    model.up = False
    run["thread"].join(20)
    assert not run["thread"].is_alive() and run["code"] == EXIT_BACKEND_DOWN


def test_health_while_shutting_down_is_503_with_retry_after() -> None:
    # docs/server.md promised Retry-After on both of /health's 503s; this one had none
    with TestClient(create_app(HashEmbedder(), ServerConfig())) as c:
        c.app.state.service.batcher._closing = True  # as close() marks it, without the wait
        r = c.get("/health")
        c.app.state.service.batcher._closing = False
    assert r.status_code == 503 and "shutting down" in r.json()["error"]
    assert int(r.headers["Retry-After"]) >= 1


def test_a_loopback_server_answers_its_own_names_only() -> None:
    """DNS rebinding: a page that binds its own domain to 127.0.0.1 sent its Host and read a
    keyless local server's /search, vectors and metrics. ``serve`` on loopback now answers
    localhost, 127.0.0.1 and [::1] only (400 otherwise, every route); ``allowed_hosts``
    (``--allowed-host``) names others, ``"*"`` any. A second Authorization header is no key."""
    from smysl.server.config import host_name

    assert [host_name(h) for h in (b"127.0.0.1:8000", b"LOCALHOST", b"[::1]:80", b"[::1]",
                                   b"evil.example:1", b"localhost.:80", b"[::1]evil.com")] == [
        "127.0.0.1", "localhost", "[::1]", "[::1]", "evil.example", "localhost",
        "[::1]evil.com"]
    # entries that could never match a Host are refused, and () (nothing served)
    for bad in (("myhost:8000",), ("::1",), ("[::1]:80",), ("*.example.com",), ("a b",), ()):
        with pytest.raises(ValueError, match="allowed_hosts"):
            ServerConfig(allowed_hosts=bad)
    seen: dict[str, Any] = {}
    stop = threading.Event()

    def ready(host: str, port: int) -> None:
        seen["url"] = f"http://{host}:{port}"
        stop.set()

    backend = Flaky()  # down at the end: serve() stops
    run = run_serve(backend, ServerConfig(port=0, unhealthy_exit_s=0.5), ready)
    assert stop.wait(20)
    url = seen["url"]
    try:
        assert httpx.get(f"{url}/health").status_code == 200
        port = url.rsplit(":", 1)[1]
        assert httpx.get(f"{url}/health", headers={"Host": f"localhost:{port}"}
                         ).status_code == 200
        for path in ("/health", "/v1/models", "/health/"):  # the slash redirect too
            r = httpx.get(f"{url}{path}", headers={"Host": "evil.example"})
            assert r.status_code == 400 and "--allowed-host" in r.text, (path, r.text)
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "x"},
                       headers={"Host": "evil.example"})
        assert r.status_code == 400 and "Host" in r.json()["error"]["message"]
    finally:
        backend.up = False
        run["thread"].join(20)
    # bound to another loopback address: that address is one of its names
    seen.clear()
    stop.clear()
    backend = Flaky()
    run = run_serve(backend, ServerConfig(host="127.0.0.2", port=0, unhealthy_exit_s=0.5,
                                          allowed_hosts=("embed.example",)), ready)
    assert stop.wait(20)
    try:
        assert httpx.get(f"{seen['url']}/health").status_code == 200
        # names given add to a loopback server's own (local checks kept working)
        for name in ("embed.example", "localhost"):
            assert httpx.get(f"{seen['url']}/health", headers={"Host": name}
                             ).status_code == 200, name
    finally:
        backend.up = False
        run["thread"].join(20)
    cfg = ServerConfig(allowed_hosts=("embed.example",), api_key="k")
    with TestClient(create_app(HashEmbedder(), cfg), base_url="http://embed.example") as c:
        auth = {"Authorization": "Bearer k"}
        assert c.get("/v1/models", headers=auth).status_code == 200
        assert c.get("/v1/models", headers={**auth, "Host": "127.0.0.1"}).status_code == 400
        # two Authorization headers: which one counted depended on the parser
        twice = [("Authorization", "Bearer wrong"), ("Authorization", "Bearer k")]
        assert c.get("/v1/models", headers=twice).status_code == 401
    with TestClient(create_app(HashEmbedder(), ServerConfig(allowed_hosts=("*",)))) as c:
        assert c.get("/v1/models", headers={"Host": "anything"}).status_code == 200
    with pytest.raises(ValueError, match="allowed_hosts"):
        ServerConfig(allowed_hosts=("a b/c",))


def test_a_body_that_never_ends_is_answered_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose body stops short of its Content-Length held its connection (and a
    file descriptor) for ever: each part of a body now has BODY_IDLE_S to arrive, and the 408
    closes the connection (kept alive, one more byte from the client held it again). A body
    sent slowly but steadily is read whole."""
    from smysl.server import app

    monkeypatch.setattr(app, "BODY_IDLE_S", 0.5)
    with live_server(HashEmbedder()) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            answer = sock.recv(65536).decode()
            rest = sock.recv(65536)  # b"": the server closed the connection
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "nothing for 0.5 s" in answer and "connection: close" in answer.lower()
        assert rest == b""
        body = b'{"input": "slow but steady"}'
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n")
            for i in range(0, len(body), 8):  # 1.2 s in all, 0.3 s a part
                time.sleep(0.3)
                sock.sendall(body[i:i + 8])
            answer = sock.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 200"), answer


def test_an_in_process_engine_runs_queries_between_a_long_pass_s_layers_and_stops_it_for_nobody(
        tiny_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``--in-process`` (Windows' only mode): the compute thread computed each pass itself, so
    a one-word query waited for a whole 16K-token pass (20 s; 3 s with an engine process), and
    a pass whose client had gone ran to its end for nobody, logged 200, while every request
    behind it timed out. The query now runs between the long pass's layers, and a pass whose
    client left stops at its next layer (logged 499)."""
    import torch

    from smysl import Embedder
    from smysl.qwen3 import model as qwen3_model

    slow_layers: list[int] = []  # each layer a long input's pass ran
    forward = qwen3_model.DecoderLayer.forward

    def slow(self, h, *args, **kwargs):  # type: ignore[no-untyped-def]
        if h.shape[0] > 200:  # the long input's layers only
            slow_layers.append(h.shape[0])
            time.sleep(1.0)
        return forward(self, h, *args, **kwargs)

    monkeypatch.setattr(qwen3_model.DecoderLayer, "forward", slow)
    model = Embedder.load(str(tiny_dir), device="cpu", threads=torch.get_num_threads(),
                          process=False, max_batch_tokens=64)
    long = "слово " * 150
    assert 200 < model.count_tokens([long])[0] < model.max_tokens
    try:
        with live_server(model, max_batch_tokens=64, max_wait_ms=1) as url:
            def send_long(timeout: float) -> None:
                with contextlib.suppress(httpx.TimeoutException):
                    httpx.post(f"{url}/v1/embeddings", json={"input": long}, timeout=timeout)

            waiting = threading.Thread(target=send_long, args=(30,))
            waiting.start()
            deadline = time.monotonic() + 10
            while not slow_layers:
                assert time.monotonic() < deadline and waiting.is_alive()
                time.sleep(0.01)
            t0 = time.monotonic()
            r = httpx.post(f"{url}/v1/embeddings", json={"input": "привет"}, timeout=30)
            took = time.monotonic() - t0
            assert r.status_code == 200 and waiting.is_alive(), r.text
            assert took < 1.5, took  # one layer of the long pass at most, not both
            np.testing.assert_array_equal(np.asarray(r.json()["data"][0]["embedding"],
                                                     np.float32), model.embed(["привет"])[0])
            waiting.join(30)
            assert len(slow_layers) == 2
            # a client that leaves during the first layer: the pass stops after it
            slow_layers.clear()
            send_long(0.3)
            time.sleep(2.5)
            assert len(slow_layers) == 1, slow_layers
            metrics = httpx.get(f"{url}/metrics").text
            assert re.search(r'smysl_dropped_requests_total\{[^}]*\} 1', metrics) or \
                'status="499"' in metrics, metrics
    finally:
        model.close()
