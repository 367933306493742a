"""Rerank routes (issue 15): TEI ``/rerank`` and Cohere/Jina ``/v1/rerank`` over a tiny random
Qwen3-Reranker, through the official ``cohere`` SDK and plain JSON on a live loopback server,
and every bad input answered 4xx in its API's error shape."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_http import live_server
from qwen_tiny import QueuedEngine, build_tiny_reranker
from server_helpers import HashEmbedder

pytest.importorskip("fastapi")

QUERY = "Какая столица у России?"
DOCS = ["Москва — столица России.", "The quick brown fox jumps over the lazy dog.",
        "Paris is the capital of France.", "Столица — главный город страны.", "a",
        "Embeddings map text to vectors; similar texts land close together."]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from smysl import Reranker

    path: Path = build_tiny_reranker(tmp_path_factory.mktemp("rr") / "m", seed=7).path
    return Reranker.load(str(path), device="cpu")


@pytest.fixture(scope="module")
def client(reranker: Any) -> Iterator[Any]:
    """The reranker alone (``smysl serve --reranker R`` without ``--model``)."""
    from fastapi.testclient import TestClient

    from smysl.server import ServerConfig, create_app

    app = create_app(None, ServerConfig(max_inputs=100), reranker=reranker)
    with TestClient(app) as c:
        yield c


def test_cohere_sdk_and_tei_json_get_the_in_process_scores(reranker: Any) -> None:
    """issue 15: the official cohere SDK's rerank and plain TEI JSON, on a live server that
    also serves embeddings, get the in-process scores (<= 1e-6) best first; top_n and
    return_documents are honoured."""
    cohere = pytest.importorskip("cohere")
    expected = reranker.rerank(QUERY, DOCS)
    with live_server(HashEmbedder(), reranker, api_key="sekret") as url:
        co = cohere.Client(api_key="sekret", base_url=url)
        res = co.rerank(model=reranker.name, query=QUERY, documents=DOCS, top_n=3,
                        return_documents=True)
        got = [(r.index, r.relevance_score) for r in res.results]
        assert [i for i, _ in got] == [i for i, _ in expected[:3]]
        assert max(abs(s - e) for (_, s), (_, e) in zip(got, expected, strict=False)) <= 1e-6
        assert [r.document.text for r in res.results] == [DOCS[i] for i, _ in got]
        plain = co.rerank(query=QUERY, documents=[{"text": d} for d in DOCS])
        assert [(r.index, r.relevance_score) for r in plain.results] == expected
        assert all(r.document is None for r in plain.results)

        auth = {"Authorization": "Bearer sekret"}
        tei = httpx.post(f"{url}/rerank", headers=auth, json={
            "query": QUERY, "texts": DOCS, "return_text": True}).json()
        assert [(r["index"], r["score"]) for r in tei] == expected
        assert [r["text"] for r in tei] == [DOCS[r["index"]] for r in tei]
        raw = httpx.post(f"{url}/rerank", headers=auth, json={
            "query": QUERY, "texts": DOCS, "raw_scores": True}).json()
        assert [r["index"] for r in raw] == [i for i, _ in expected]
        probs = dict(expected)  # raw scores are the logit difference yes - no
        assert all(abs(1 / (1 + math.exp(-r["score"])) - probs[r["index"]]) <= 1e-6 for r in raw)
        assert [r["score"] for r in raw] != [p for _, p in expected]
        # the embedding routes still answer beside the rerank ones
        emb = httpx.post(f"{url}/v1/embeddings", headers=auth, json={"input": "x"})
        assert emb.status_code == 200
        assert httpx.post(f"{url}/v1/rerank", json={"query": QUERY,
                                                    "documents": DOCS}).status_code == 401


def test_bad_input_is_4xx_in_each_apis_shape(client: Any, reranker: Any) -> None:
    """issue 15: empty query, empty document list, 10,000 documents, a document over the
    limit (truncated on request), unknown model, bad top_n and malformed bodies: each a clear
    4xx in its API's error shape, never 5xx."""
    long_doc = "слово " * 600  # over the tiny model's 512 positions
    cases = [
        ({"query": " ", "documents": DOCS}, {"query": " ", "texts": DOCS}, 400, 400, "query"),
        ({"query": QUERY, "documents": []}, {"query": QUERY, "texts": []}, 400, 400, "empty"),
        ({"query": QUERY, "documents": ["d"] * 10_000}, {"query": QUERY, "texts": ["d"] * 10_000},
         400, 422, "at most 100"),
        ({"query": QUERY, "documents": [DOCS[0], long_doc]},
         {"query": QUERY, "texts": [DOCS[0], long_doc]}, 400, 422, "[1] with the query has"),
    ]
    for v1, tei, v1_status, tei_status, words in cases:
        r = client.post("/v1/rerank", json=v1)
        assert r.status_code == v1_status, r.text
        assert words in r.json()["error"]["message"]
        r = client.post("/rerank", json=tei)
        assert r.status_code == tei_status, r.text
        assert words in r.json()["error"] and r.json()["error_type"]
    # truncation on request: the document's end is cut, as in-process
    ok = client.post("/v1/rerank", json={"query": QUERY, "documents": [DOCS[0], long_doc],
                                         "truncate": True}).json()["results"]
    want = reranker.rerank(QUERY, [DOCS[0], long_doc], truncate=True)
    assert [(x["index"], x["relevance_score"]) for x in ok] == want
    tei = client.post("/rerank", json={"query": QUERY, "texts": [long_doc], "truncate": True})
    assert tei.status_code == 200 and tei.json()[0]["score"] == want[[i for i, _ in want]
                                                                    .index(1)][1]
    r = client.post("/v1/rerank", json={"model": "gpt-4", "query": QUERY, "documents": DOCS})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    for body in ({"query": QUERY, "documents": DOCS, "top_n": 0},
                 {"query": QUERY, "documents": [{"title": "no text"}]},
                 {"query": 5, "documents": DOCS}, {"documents": DOCS}):
        r = client.post("/v1/rerank", json=body)
        assert r.status_code == 400 and r.json()["error"]["message"], (body, r.text)
    assert client.post("/rerank", json={"query": QUERY}).status_code == 422
    assert client.post("/rerank", content=b"{", headers={
        "content-type": "application/json"}).status_code == 400


def test_reranker_alone_serves_health_metrics_and_no_embeddings(client: Any) -> None:
    """issue 15: ``--reranker`` without ``--model``: rerank routes, /health and /metrics; the
    embedding routes are absent (404), and rerank work is counted."""
    assert client.get("/health").status_code == 200
    assert client.get("/ping").status_code == client.head("/").status_code == 200
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 404
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert r.json()["usage"]["total_tokens"] > 0
    metrics = client.get("/metrics").text
    assert "smysl_rerank_inputs_total" in metrics
    assert 'route="/v1/rerank"' in metrics


@pytest.mark.parametrize("queues", [False, True])
def test_concurrent_requests_share_forward_passes(reranker: Any, queues: bool) -> None:
    """issue 15: rerank requests go through the dynamic batcher: 24 concurrent small requests
    are packed into fewer forward passes, and every score equals the in-process one exactly
    (each row is computed on its own, whatever it was batched with); also on an engine with
    CUDA's timing (a stand-in), where a batch may be queued behind the running one."""
    import asyncio

    from smysl import Reranker
    from smysl.server import ServerConfig, create_app

    served, queued = reranker, QueuedEngine(reranker.engine)
    if queues:
        served = Reranker(queued, reranker.tokenizer, reranker.head,  # type: ignore[arg-type]
                          name=reranker.name)
    app = create_app(None, ServerConfig(max_inputs=100, max_wait_ms=20), reranker=served)
    queries = [f"{QUERY} {i}" for i in range(24)]
    want = [reranker.rerank(q, DOCS[i % 3:]) for i, q in enumerate(queries)]

    async def go() -> tuple[list[Any], str]:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post("/v1/rerank", json={
                "query": q, "documents": DOCS[i % 3:]}) for i, q in enumerate(queries)))
            return [r.json()["results"] for r in rs], (await c.get("/metrics")).text

    got, metrics = asyncio.run(go())
    for results, expected in zip(got, want, strict=True):
        assert [(r["index"], r["relevance_score"]) for r in results] == expected
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("smysl_rerank_batch_requests_")}
    batches, requests = values["smysl_rerank_batch_requests_count"], \
        values["smysl_rerank_batch_requests_sum"]
    assert requests == 24 and batches < 24, values
    assert f"smysl_rerank_inputs_total {sum(len(DOCS[i % 3:]) for i in range(24))}.0" in metrics
    in_flight = queued.in_flight()
    # queued: a batch went ahead of the running one, never more than one
    assert not in_flight if not queues else max(in_flight) == 2 and in_flight[-1] == 0


def test_a_remote_reranker_is_served_per_request(reranker: Any) -> None:
    """issue 15: ``serve --reranker smysl:URL`` fronts another server's reranker: same scores
    and order; raw scores (a local engine's logits) are refused as unsupported."""
    from fastapi.testclient import TestClient

    import smysl
    from smysl.server import ServerConfig, create_app

    with live_server(None, reranker) as url:
        remote = smysl.load_reranker(f"smysl:{url}")
        with TestClient(create_app(None, ServerConfig(), reranker=remote)) as c:
            got = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
            want = reranker.rerank(QUERY, DOCS)
            assert [r["index"] for r in got["results"]] == [i for i, _ in want]
            assert max(abs(r["relevance_score"] - s) for r, (_, s)
                       in zip(got["results"], want, strict=True)) <= 1e-6
            raw = c.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
            assert raw.status_code == 422 and "raw_scores" in raw.json()["error"]
            assert "smysl_rerank_inputs_total 6.0" in c.get("/metrics").text
        remote.close()


def test_serve_needs_a_model_or_a_reranker() -> None:
    """issue 15: create_app refuses to serve nothing."""
    from smysl.server import create_app

    with pytest.raises(ValueError, match="nothing to serve"):
        create_app(None)


def test_serve_cli_takes_a_reranker_with_or_without_a_model(
        reranker: Any, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """issue 15: ``smysl serve --reranker R`` (alone or with ``--model E``) loads the reranker
    with the device flags and hands it to the server; neither flag is an error."""
    import smysl.server
    from smysl.cli import main

    seen: dict[str, Any] = {}

    def fake_serve(embedder: Any, config: Any, *, ready: Any, reranker: Any) -> int:
        seen.update(embedder=embedder, reranker=reranker, alive=reranker.healthy,
                    ranked=reranker.rerank(QUERY, DOCS))
        ready("127.0.0.1", 43210)
        return 0

    monkeypatch.setattr(smysl.server, "serve", fake_serve)
    monkeypatch.delenv("SMYSL_MODEL", raising=False)
    path = reranker.name  # the tiny checkpoint's directory
    assert main(["serve", "--reranker", path, "--device", "cpu", "--max-tokens", "64"]) == 0
    assert seen["embedder"] is None and seen["alive"]
    assert seen["reranker"].engine.pid is not None  # the engine runs in a child process
    want = reranker.rerank(QUERY, DOCS)
    assert [i for i, _ in seen["ranked"]] == [i for i, _ in want]
    assert max(abs(a - b) for (_, a), (_, b) in zip(seen["ranked"], want, strict=True)) <= 1e-6
    assert seen["reranker"].max_tokens == 512  # --max-tokens is the embedding model's
    assert not seen["reranker"].healthy  # its engine process was stopped on exit
    err = capsys.readouterr().err
    assert "loaded reranker" in err and "/v1/rerank" in err and "/v1/embeddings" not in err
    assert main(["serve", "--model", str(tiny_dir), "--reranker", path, "--device", "cpu",
                 "--in-process"]) == 0
    assert seen["embedder"].dimensions == 64 and seen["reranker"].healthy
    assert "/v1/embeddings" in capsys.readouterr().err
    assert main(["serve", "--device", "cpu"]) != 0
    assert "--reranker" in capsys.readouterr().err
