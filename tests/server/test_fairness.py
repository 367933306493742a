"""Bounded, fair serving (issue 11 item 6 and the Retry-After part of item 8): large requests are
cut into slices that short ones overtake, per-request token and time budgets, huge bodies
refused before tokenisation, and a Retry-After measured from the drain rate."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_helpers import HashEmbedder

from smysl.server import ServerConfig, create_app
from smysl.server.batcher import Batcher, EmbedBackend, Job
from smysl.server.errors import ApiError
from smysl.server.metrics import Metrics


class SlowEmbedder(HashEmbedder):
    """Takes a fixed time per input: a backend whose drain rate is known."""

    def __init__(self, per_input_s: float) -> None:
        super().__init__()
        self.per_input_s = per_input_s

    def _embed(self, texts: list[str], **kwargs: object) -> np.ndarray:
        time.sleep(self.per_input_s * len(texts))
        return super()._embed(texts, **kwargs)  # type: ignore[arg-type]


def batcher(backend: HashEmbedder, *, budget: int, queue: int = 64) -> Batcher:
    return Batcher(EmbedBackend(backend), Metrics(), max_batch_tokens=budget, max_batch_requests=64,
                   max_wait_s=0, max_queue=queue)


def test_a_short_request_overtakes_a_large_one(hash_backend: HashEmbedder) -> None:
    """issue 11 item 6: one large request no longer holds the compute thread until it ends."""
    big = [f"big {i}" for i in range(40)]
    b = batcher(hash_backend, budget=10)

    async def go() -> tuple[np.ndarray, np.ndarray]:
        hash_backend.gate.clear()
        large = asyncio.ensure_future(b.submit(Job(("text", False), big, [2] * 40, 48)))
        await asyncio.to_thread(hash_backend.entered.wait, 10)  # its first slice computes
        short = asyncio.ensure_future(b.submit(Job(("text", False), ["short"], [2], 48)))
        await asyncio.sleep(0.05)
        hash_backend.gate.set()
        rows = await asyncio.gather(large, short)
        await b.close()
        return rows[0], rows[1]

    large_rows, short_rows = asyncio.run(go())
    calls = hash_backend.calls
    assert calls[0] == big[:5]  # one slice within the 10-token budget
    assert calls[1][0] == "short"  # the next batch starts with the short request ...
    assert calls[1][1:] == big[5:9]  # ... and fills the rest with the large one's next slice
    assert len(calls) == 9 and [t for c in calls for t in c if t != "short"] == big
    # slicing changes nothing in the vectors
    assert np.array_equal(large_rows, hash_backend.embed(big))
    assert np.array_equal(short_rows, hash_backend.embed(["short"]))


def test_large_jobs_take_turns_and_are_not_starved(hash_backend: HashEmbedder) -> None:
    """issue 11 item 6: two large jobs alternate slices, and short ones cannot starve them."""
    a = [f"a{i}" for i in range(6)]
    c = [f"c{i}" for i in range(6)]
    b = batcher(hash_backend, budget=4)

    async def go() -> None:
        hash_backend.gate.clear()
        busy = asyncio.ensure_future(b.submit(Job(("text", False), ["busy"], [4], 48)))
        await asyncio.to_thread(hash_backend.entered.wait, 10)
        jobs = [asyncio.ensure_future(b.submit(Job(("text", False), x, [2] * 6, 48)))
                for x in (a, c)]
        shorts = [asyncio.ensure_future(b.submit(Job(("text", False), [f"s{i}"], [4], 48)))
                  for i in range(4)]
        await asyncio.sleep(0.05)
        hash_backend.gate.set()
        await asyncio.gather(busy, *jobs, *shorts)
        await b.close()

    asyncio.run(go())
    calls = hash_backend.calls[1:]
    # each short request fills a batch; after two batches that gave the large jobs nothing,
    # one of them goes first; the large jobs take turns; a remainder that fits goes whole
    assert calls == [["s0"], ["s1"], ["a0", "a1"], ["s2"], ["s3"], ["c0", "c1"], ["a2", "a3"],
                     ["a4", "a5"], ["c2", "c3"], ["c4", "c5"]]


def test_time_budget_answers_and_abandons_the_rest(hash_backend: HashEmbedder) -> None:
    """issue 11 item 6: over its time budget a request gets the timeout error and the rest of
    its slices are never computed."""
    big = [f"big {i}" for i in range(20)]
    b = batcher(hash_backend, budget=4)

    async def go() -> None:
        hash_backend.gate.clear()
        job = Job(("text", False), big, [2] * 20, 48, timeout_s=0.3)
        t0 = time.perf_counter()
        with pytest.raises(ApiError) as err:
            await b.submit(job)
        assert 0.25 < time.perf_counter() - t0 < 5
        assert err.value.kind == "timeout" and err.value.status("openai") == 504
        hash_backend.gate.set()
        # the server carries on
        assert (await b.submit(Job(("text", False), ["next"], [2], 48))).shape == (1, 48)
        await b.close()

    asyncio.run(go())
    computed = [t for c in hash_backend.calls for t in c]
    assert computed == [*big[:2], "next"]  # the slice that was running, then nothing of it


def test_time_budget_in_each_api_shape(hash_backend: HashEmbedder) -> None:
    """issue 11 item 6: past ``request_timeout_s`` each API answers 504 in its own shape."""
    app = create_app(hash_backend, ServerConfig(request_timeout_s=0.3, max_wait_ms=0))

    async def go() -> list[httpx.Response]:
        hash_backend.gate.clear()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as c:
            rs = await asyncio.gather(
                c.post("/v1/embeddings", json={"input": "a"}),
                c.post("/api/embed", json={"input": "b"}),
                c.post("/embed", json={"inputs": "c"}))
            hash_backend.gate.set()
            return list(rs)

    openai, ollama, tei = asyncio.run(go())
    assert [r.status_code for r in (openai, ollama, tei)] == [504] * 3
    assert openai.json()["error"]["code"] == "timeout"
    assert "time budget" in ollama.json()["error"]
    assert tei.json()["error_type"] == "Backend"


def test_retry_after_follows_the_measured_drain_rate() -> None:
    """issue 11 item 8: Retry-After is the tokens queued ahead over the measured tokens per
    second, within 2x of how long the queue really takes to drain."""
    backend = SlowEmbedder(per_input_s=0.5)
    b = batcher(backend, budget=8, queue=4)

    async def go() -> tuple[int, float]:
        # warm-up: the drain rate is measured on real batches (8 tokens per 0.5 s)
        await asyncio.gather(*[b.submit(Job(("text", False), [f"w{i}"], [8], 48))
                               for i in range(2)])
        first = asyncio.ensure_future(b.submit(Job(("text", False), ["q"], [8], 48)))
        await asyncio.sleep(0.05)  # it computes; four more fill the queue
        queued = [asyncio.ensure_future(b.submit(Job(("text", False), [f"q{i}"], [8], 48)))
                  for i in range(4)]
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        with pytest.raises(ApiError) as err:
            await b.submit(Job(("text", False), ["over"], [8], 48))
        assert err.value.kind == "overloaded"
        retry = int(err.value.headers["Retry-After"])
        await asyncio.gather(first, *queued)
        await b.close()
        return retry, time.perf_counter() - t0

    retry, drained = asyncio.run(go())
    assert drained / 2 <= retry <= max(1.0, 2 * drained), (retry, drained)


@pytest.fixture(scope="module")
def capped(tiny):  # type: ignore[no-untyped-def]
    with TestClient(create_app(tiny, ServerConfig(max_request_tokens=40, token_ids=True))) as c:
        yield c


def test_token_cap_in_each_api_shape(capped, tiny) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item 6: a request over ``max_request_tokens`` gets a clear 400 (TEI: 422);
    Ollama's is embedded in pieces within it."""
    texts = ["one two three four five six seven eight nine ten"] * 6
    assert sum(tiny.count_tokens(texts)) > 40
    r = capped.post("/v1/embeddings", json={"input": texts})
    assert r.status_code == 400 and "max_request_tokens" in r.json()["error"]["message"]
    # Ollama's route takes any number, as Ollama does: in pieces within the cap
    r = capped.post("/api/embed", json={"input": texts})
    assert np.array_equal(np.array(r.json()["embeddings"], np.float32), tiny.embed(texts))
    r = capped.post("/embed", json={"inputs": texts})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    r = capped.post("/tokenize", json={"inputs": texts})
    assert r.status_code == 422 and "max_request_tokens" in r.json()["error"]
    r = capped.post("/v1/embeddings", json={"input": [[5] * 50]})
    assert r.status_code == 400 and "max_request_tokens" in r.json()["error"]["message"]
    # within the cap all is as before
    r = capped.post("/api/embed", json={"input": texts[:2]})
    assert np.array_equal(np.array(r.json()["embeddings"], np.float32), tiny.embed(texts[:2]))


def test_an_openai_clients_ordinary_batch_fits_the_default_limits(tiny) -> None:  # type: ignore[no-untyped-def]
    """LangChain's OpenAIEmbeddings sends 1,000 texts a call (up to OpenAI's 300,000 tokens):
    1,000 RAG chunks of ~1,000 characters (~277K tokens) got a 400 under the old defaults
    (65,536 tokens, 524,288 characters), and OpenAI clients do not split on a 400."""
    words = ["Семантический", "поиск", "сравнивает", "смыслы", "текстов,", "а", "не",
             "слова.", "Search", "compares", "meanings."]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(120)) + f" {i}"
             for i in range(1000)]
    assert sum(map(len, texts)) > 900_000 and sum(tiny.count_tokens(texts)) > 250_000
    with TestClient(create_app(tiny, ServerConfig())) as c:
        r = c.post("/v1/embeddings", json={"input": texts, "model": tiny.name})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
    np.testing.assert_allclose(got[::97], tiny.embed(texts[::97]), atol=1e-6)


def test_huge_bodies_are_refused_before_tokenisation(capped) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item 6: a big body on /tokenize or a truncating /api/embed is refused from its
    length alone (it used to be tokenised whole: 1.7 GB for 15 MB)."""
    huge = "word " * 200_000  # 1 MB
    t0 = time.perf_counter()
    r = capped.post("/tokenize", json={"inputs": huge})
    assert r.status_code == 422 and "characters" in r.json()["error"]
    r = capped.post("/api/embed", json={"input": huge})  # Ollama truncates by default
    assert r.status_code == 400 and "characters" in r.json()["error"]
    assert time.perf_counter() - t0 < 2  # tokenising 1 MB twice would take longer


def test_health_follows_the_backends_health() -> None:
    """/health is 503 while ``embedder.healthy`` is False (a hung upstream, a dead engine) and
    counts the outage in the metrics."""

    class Flaky(HashEmbedder):
        up = True

        @property
        def healthy(self) -> bool:
            return self.up

    backend = Flaky()
    with TestClient(create_app(backend, ServerConfig())) as c:
        assert c.get("/health").status_code == 200
        backend.up = False
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["error_type"] == "Unhealthy"
        assert int(r.headers["Retry-After"]) >= 1
        backend.up = True
        assert c.get("/health").status_code == 200
        text = c.get("/metrics").text
        assert "smysl_backend_down_total 1.0" in text
        assert "smysl_backend_recovered_total 1.0" in text


def test_a_long_outage_says_when_the_server_gives_up() -> None:
    """A review's: after the engine's restarts were spent, every request and /health still
    said "an engine process that exited restarts itself; retry shortly" with Retry-After 1,
    until the server exited. Down longer than an outage lasts, the 503 says when the server
    exits, and Retry-After points past it."""
    from prometheus_client import CollectorRegistry

    from smysl.server.health import BackendHealth
    from smysl.server.metrics import HealthMetrics

    h = BackendHealth("the engine", lambda: False, HealthMetrics(CollectorRegistry(), "t"),
                      remote=False, unhealthy_exit_s=60.0)
    h.check()
    assert "restarts itself); retry shortly" in str(h.unavailable())  # a restart's time
    h.down_since = time.monotonic() - 30  # long past it
    err = h.unavailable()
    assert "has been down for 30 s; unless it is back within 30 s the server exits" in str(err)
    assert 29 <= int(err.headers["Retry-After"]) <= 31
    never = BackendHealth("the API", lambda: False, HealthMetrics(CollectorRegistry(), "u"),
                          remote=True)  # a remote backend: the server never exits for it
    never.check()
    never.down_since = time.monotonic() - 300
    assert "retry shortly" in str(never.unavailable())


def test_lone_surrogates_are_400_on_every_route(tiny) -> None:  # type: ignore[no-untyped-def]
    """issue 11 item 9: a lone surrogate in ``instruction`` (or the input) used to be a 500."""
    app = create_app(tiny, ServerConfig())
    bodies = [
        ("/v1/embeddings", b'{"input": "x", "instruction": "\\ud800 task"}'),
        ("/v1/embeddings", b'{"input": ["ok", "\\udfff"]}'),
        ("/api/embed", b'{"input": "x", "instruction": "\\ud800"}'),
        ("/api/embed", b'{"input": "x", "input_type": "\\ud800"}'),
        ("/api/embeddings", b'{"prompt": "\\ud800"}'),
        ("/embed", b'{"inputs": "\\ud800"}'),
        ("/embed", b'{"inputs": "x", "prompt_name": "\\ud800"}'),
        ("/tokenize", b'{"inputs": "\\ud800"}'),
        ("/api/show", b'{"model": "\\ud800"}'),
    ]

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as c:
            return [await c.post(p, content=b, headers={"Content-Type": "application/json"})
                    for p, b in bodies]

    for (path, _), r in zip(bodies, asyncio.run(go()), strict=True):
        assert r.status_code in (400, 404, 422), (path, r.status_code, r.text)
        assert "error" in r.json()
