"""Rerank routes (issue 15): TEI ``/rerank`` and Cohere/Jina ``/v1/rerank`` over a tiny random
Qwen3-Reranker, through the official ``cohere`` SDK and plain JSON on a live loopback server,
and every bad input answered 4xx in its API's error shape."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_http import live_server
from qwen_tiny import QueuedEngine, build_tiny_reranker
from server_helpers import HashEmbedder, errors_left_in_cycles

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
         {"query": QUERY, "texts": [DOCS[0], long_doc]}, 400, 422,
         "[1] with the query is longer than the model's context length"),
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


def test_refused_rerank_requests_leave_no_error_in_a_cycle(reranker: Any) -> None:
    """A review's: each refused over-long document kept its tokens and the tokenizer's
    encoding in an error cycle only a full collection frees (a server grew 300 MB a request
    of 2.4 MB); every API's refusal, and a document that is not text, let go. (Texts over
    4,096 characters: those are tokenised in a thread, whose future made the cycle.)"""
    long_doc = "слово " * 1000
    with live_server(None, reranker) as url:
        for path, body in [("/v1/rerank", {"query": QUERY, "documents": [DOCS[0], long_doc]}),
                           ("/rerank", {"query": QUERY, "texts": [long_doc]}),
                           ("/v1/rerank", {"query": QUERY, "documents": [{"title": "x"}]})]:
            status, left = errors_left_in_cycles(
                lambda p=path, b=body: httpx.post(url + p, json=b).status_code)
            assert status in (400, 422) and left == [], (path, status, left)


def test_reranker_alone_serves_health_metrics_and_no_embeddings(client: Any,
                                                                reranker: Any) -> None:
    """issue 15: ``--reranker`` without ``--model``: rerank routes, /health and /metrics; the
    embedding routes are absent (404), and rerank work is counted."""
    assert client.get("/health").status_code == 200
    assert client.get("/ping").status_code == client.head("/").status_code == 200
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 404
    # the page needs an embedding model, and says so (a review's: "no route GET /ui")
    page = client.get("/ui")
    assert page.status_code == 404 and "needs an embedding model" in page.json()["error"]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert r.json()["usage"]["total_tokens"] > 0
    metrics = client.get("/metrics").text
    assert "smysl_rerank_inputs_total" in metrics
    assert 'route="/v1/rerank"' in metrics
    # TEI's /info describes the reranker (it was a 404)
    info = client.get("/info").json()
    assert info["model_type"] == {"reranker": {"id2label": {"0": "yes"},
                                               "label2id": {"yes": 0}}}
    assert info["max_input_length"] == reranker.max_tokens
    assert info["model_id"] == reranker.name and info["threads"] == reranker.info().threads
    assert info["device"] == "cpu"


def test_v1_models_lists_the_reranker_alone_or_beside_the_embedding_model(
        client: Any, reranker: Any) -> None:
    """A reranker served alone was a 404 on /v1/models, where OpenAI-style clients look for
    the served models; beside an embedding model it was left out of the list."""
    from fastapi.testclient import TestClient

    from smysl.server import create_app

    listed = client.get("/v1/models")
    assert listed.status_code == 200, listed.text
    (card,) = listed.json()["data"]
    assert card["id"] == reranker.name and card["dimensions"] is None
    assert card["max_model_len"] == reranker.max_tokens
    assert client.get(f"/v1/models/{reranker.name}").json() == card
    # a name with Ollama's default tag, as the embedding model's is taken (a review's: 404)
    assert client.get(f"/v1/models/{reranker.name.upper()}:latest").json() == card
    r = client.post("/v1/rerank", json={"model": f"{reranker.name}:latest", "query": QUERY,
                                        "documents": DOCS})
    assert r.status_code == 200, r.text
    missing = client.get("/v1/models/text-embedding-3-small")
    assert missing.status_code == 404 and reranker.name in missing.text
    with TestClient(create_app(HashEmbedder(), reranker=reranker)) as both:
        ids = [c["id"] for c in both.get("/v1/models").json()["data"]]
        assert ids == [HashEmbedder().name, reranker.name]
        assert both.get(f"/v1/models/{reranker.name}").json()["dimensions"] is None
        assert both.get(f"/v1/models/{HashEmbedder().name}").json()["dimensions"] == \
            HashEmbedder.dimensions
        missing = both.get("/v1/models/text-embedding-3-small")
        assert missing.status_code == 404
        assert all(i in missing.json()["error"]["message"] for i in ids)


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
    # queued: a batch went ahead of the one computing, never more than one
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


def test_a_served_remote_reranker_keeps_the_upstreams_ranking_and_refuses_raw_scores(
        reranker: Any) -> None:
    """A review's: a server fronting `smysl:URL` ranked by the scores alone, so saturated ones
    (P("yes") 1.0) came back in input order where the upstream, and the Python client, rank
    by the logit difference; `/v1/rerank` took ``raw_scores`` and answered without them, where
    TEI's route and the docs refuse it."""
    from fastapi.testclient import TestClient

    import smysl
    from smysl import Reranker
    from smysl.server import ServerConfig, create_app

    sharp = Reranker(reranker.engine, reranker.tokenizer, reranker.head * 3000, name="sharp")
    want = sharp.rerank(QUERY, DOCS)
    assert sum(s == 1.0 for _, s in want) >= 2 and [i for i, _ in want] != sorted(
        i for i, _ in want)
    with live_server(None, sharp) as url:
        remote = smysl.load_reranker(f"smysl:{url}")
        with TestClient(create_app(None, ServerConfig(), reranker=remote)) as c:
            got = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
            assert [r["index"] for r in got["results"]] == [i for i, _ in want]
            tei = c.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
            assert [r["index"] for r in tei] == [i for i, _ in want]
            # /v1/rerank leaves raw_score out (a smysl: client asks for it on every call: a
            # diff review's, refusing it broke every chain of servers); TEI's is refused
            raw = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                             "raw_scores": True})
            assert raw.status_code == 200 and "raw_score" not in raw.json()["results"][0]
            tei_raw = c.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
            assert tei_raw.status_code == 422 and "raw_scores needs a local" in tei_raw.text
        with live_server(None, remote) as front_url:  # smysl: -> front smysl -> smysl
            chained = smysl.load_reranker(f"smysl:{front_url}")
            assert [i for i, _ in chained.rerank(QUERY, DOCS)] == [i for i, _ in want]
            chained.close()
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
    # an embedding model's flags without one: an error (they were ignored, and --index was
    # announced as /search, which answered 404)
    for flags in (["--max-tokens", "64"], ["--index", "kb"], ["--dimensions", "32"],
                  ["--quantize", "int8"], ["--token-ids"]):
        assert main(["serve", "--reranker", path, "--device", "cpu", *flags]) == 2
        assert f"{flags[0]}: embedding-model flag(s)" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu",
                 "--index-threads", "2"]) == 2
    assert "--index-threads go(es) with --index" in capsys.readouterr().err
    assert not seen
    assert main(["serve", "--reranker", path, "--device", "cpu"]) == 0
    assert seen["embedder"] is None and seen["alive"]
    assert seen["reranker"].engine.pid is not None  # the engine runs in a child process
    want = reranker.rerank(QUERY, DOCS)
    assert [i for i, _ in seen["ranked"]] == [i for i, _ in want]
    assert max(abs(a - b) for (_, a), (_, b) in zip(seen["ranked"], want, strict=True)) <= 1e-6
    assert seen["reranker"].max_tokens == 512
    assert not seen["reranker"].healthy  # its engine process was stopped on exit
    err = capsys.readouterr().err
    assert "loaded reranker" in err and "/v1/rerank" in err and "/v1/embeddings" not in err
    assert main(["serve", "--model", str(tiny_dir), "--reranker", path, "--device", "cpu",
                 "--in-process"]) == 0
    assert seen["embedder"].dimensions == 64 and seen["reranker"].healthy
    assert "/v1/embeddings" in capsys.readouterr().err
    assert main(["serve", "--device", "cpu"]) != 0
    assert "--reranker" in capsys.readouterr().err


def test_cohere_v2_sdk_reranks_with_max_tokens_per_doc(reranker: Any) -> None:
    """audit 1, 2, 6: the official SDK's ClientV2 (POST /v2/rerank) gets the in-process scores
    best first, top_n honoured, no documents echoed; documents are cut to max_tokens_per_doc
    tokens (Cohere's default 4,096 when absent, so a long document is no error); search units
    are one per started 100 documents."""
    cohere = pytest.importorskip("cohere")
    long_doc = "слово " * 600  # over the tiny model's 512 positions
    docs = [*DOCS, long_doc]
    want = reranker.rerank(QUERY, docs, truncate=True)
    with live_server(None, reranker, max_inputs=300) as url:
        co = cohere.ClientV2(api_key="x", base_url=url)
        res = co.rerank(model=reranker.name, query=QUERY, documents=docs, top_n=3)
        assert [(r.index, r.relevance_score) for r in res.results] == want[:3]
        assert res.meta.billed_units.search_units == 1 and res.id
        cut = co.rerank(model=reranker.name, query=QUERY, documents=docs, max_tokens_per_doc=4)
        ids = reranker.tokenize([(QUERY, d) for d in docs], max_document_tokens=4)
        scores = reranker.score_prepared(ids)
        assert {r.index: r.relevance_score for r in cut.results} == \
            {i: float(s) for i, s in enumerate(scores)}
        many = co.rerank(model=reranker.name, query=QUERY, documents=["d"] * 250, top_n=1)
        assert many.meta.billed_units.search_units == 3
        # the plain JSON: no model is fine, as on /v1; a wrong one is 404; bad fields are 4xx
        body = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS}).json()
        assert set(body) == {"id", "results", "meta"}
        assert [r["index"] for r in body["results"]] == [i for i, _ in
                                                          reranker.rerank(QUERY, DOCS)]
        assert set(body["results"][0]) == {"index", "relevance_score"}
        assert httpx.post(f"{url}/v2/rerank", json={"model": "gpt-4", "query": QUERY,
                                                    "documents": DOCS}).status_code == 404
        for bad in ({"max_tokens_per_doc": 0}, {"top_n": 0}, {"documents": [{"text": "x"}]},
                    {"relevant_spans": {"mode": "enabled"}}, {"relevant_spans": True},
                    {"query": ""}):
            r = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS, **bad})
            # the /v1 routes' shape and status: Cohere's SDK raises BadRequestError
            assert r.status_code == 400 and r.json()["error"]["message"], (bad, r.text)
            if "relevant_spans" in bad:  # said as such, not as a type error (a review's)
                assert "Rerank v5" in r.json()["error"]["message"], r.text
        for off in (False, {"mode": "disabled"}):
            r = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS,
                                                     "relevant_spans": off})
            assert r.status_code == 200, (off, r.text)
        assert 'route="/v2/rerank"' in httpx.get(f"{url}/metrics").text


def test_v1_max_tokens_per_doc_cuts_documents_and_search_units_count_documents(
        reranker: Any) -> None:
    """audit 2, 6: /v1/rerank's max_tokens_per_doc cuts each document to that many tokens
    (truncation implied: no 400 for a long one); without it a long document is still 400
    unless truncate; search_units = ceil(documents / 100)."""
    from fastapi.testclient import TestClient

    from smysl.server import ServerConfig, create_app
    from smysl.server.rerank_routes import search_units

    long_doc = "слово " * 600
    docs = [DOCS[0], long_doc]
    with TestClient(create_app(None, ServerConfig(max_inputs=300), reranker=reranker)) as c:
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": docs,
                                       "max_tokens_per_doc": 3})
        assert r.status_code == 200, r.text
        scores = reranker.score_prepared(reranker.tokenize([(QUERY, d) for d in docs],
                                                           max_document_tokens=3))
        assert {x["index"]: x["relevance_score"] for x in r.json()["results"]} == \
            {i: float(s) for i, s in enumerate(scores)}
        assert c.post("/v1/rerank", json={"query": QUERY, "documents": docs}).status_code == 400
        for n, units in ((1, 1), (100, 1), (101, 2), (250, 3)):
            got = c.post("/v1/rerank", json={"query": QUERY, "documents": ["d"] * n, "top_n": 1})
            assert got.json()["meta"]["billed_units"]["search_units"] == units
    assert search_units(0) == 1 and search_units(200) == 2


def test_truncate_rescues_one_huge_document(client: Any, reranker: Any) -> None:
    """audit 3: with truncate, one document far over the request's character budget is cut
    before tokenising (its kept tokens unchanged) instead of answered "split it": the score is
    the Python API's truncate=True score; without truncate it is still refused."""
    huge = "Москва — столица России. " * 24000  # 600,000 characters
    want = reranker.rerank(QUERY, [huge], truncate=True)[0][1]
    tei = client.post("/rerank", json={"query": QUERY, "texts": [huge], "truncate": True})
    assert tei.status_code == 200, tei.text
    assert tei.json()[0]["score"] == want
    v1 = client.post("/v1/rerank", json={"query": QUERY, "documents": [huge], "truncate": True})
    assert v1.status_code == 200 and v1.json()["results"][0]["relevance_score"] == want
    assert client.post("/rerank", json={"query": QUERY, "texts": [huge]}).status_code == 422


def test_tei_truncation_direction_left_keeps_the_documents_end(client: Any,
                                                                reranker: Any) -> None:
    """audit 4: truncation_direction "Left" keeps the end of an over-long document (the
    prompt template and query stay), "Right" (the default) its beginning."""
    doc = "Tail: " + "pad " * 600 + "Moscow is the capital of Russia"
    got = {}
    for direction in ("Left", "left", "Right", "right"):
        r = client.post("/rerank", json={"query": QUERY, "texts": [doc], "truncate": True,
                                         "truncation_direction": direction})
        assert r.status_code == 200, r.text
        got[direction] = r.json()[0]["score"]
    for direction in ("left", "right"):
        ids = reranker.tokenize([(QUERY, doc)], truncate=True, direction=direction)
        assert got[direction] == got[direction.title()] == float(reranker.score_prepared(ids)[0])
    assert got["left"] != got["right"]
    assert client.post("/rerank", json={"query": QUERY, "texts": [doc], "truncate": True,
                                        "truncation_direction": "up"}).status_code == 422


def test_rank_fields_rank_by_those_fields_and_documents_come_back_as_sent(
        client: Any, reranker: Any) -> None:
    """audit 5: rank_fields score an object document by the named fields in order
    ("field: value" lines; one field: its value), return_documents echoes the object as sent,
    and a missing or non-string field is a 400 naming the document."""
    docs = [{"title": "Moscow is the capital of Russia", "text": "x", "id": 7},
            {"title": "Bananas", "text": "Yellow fruit", "id": 8}]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": docs,
                                        "rank_fields": ["title", "text"],
                                        "return_documents": True})
    assert r.status_code == 200, r.text
    texts = [f"title: {d['title']}\ntext: {d['text']}" for d in docs]
    want = reranker.rerank(QUERY, texts)
    assert [(x["index"], x["relevance_score"]) for x in r.json()["results"]] == want
    assert [x["document"] for x in r.json()["results"]] == [docs[i] for i, _ in want]
    titles = client.post("/v1/rerank", json={"query": QUERY, "documents": docs,
                                             "rank_fields": ["title"]}).json()["results"]
    assert [(x["index"], x["relevance_score"]) for x in titles] == \
        reranker.rerank(QUERY, [d["title"] for d in docs])
    plain = client.post("/v1/rerank", json={"query": QUERY, "documents": ["a", {"text": "b"}],
                                            "return_documents": True}).json()["results"]
    assert sorted((x["index"], x["document"]["text"]) for x in plain) == [(0, "a"), (1, "b")]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"documents": docs, "rank_fields": ["author"]}, "documents[0] has no"),
        ({"documents": [{"text": 5}]}, "documents[0] has a int"),
        ({"documents": docs, "rank_fields": ["text", "text"]}, "distinct")]
    for body, words in cases:
        bad = client.post("/v1/rerank", json={"query": QUERY, **body})
        assert bad.status_code == 400 and words in bad.json()["error"]["message"], bad.text


def test_scores_that_saturate_are_ranked_by_the_logit_difference(reranker: Any) -> None:
    """audit 7: with P("yes") saturated at 1.0 the routes order by the logit difference (as
    the Python API does), not by input order, and report P("yes")."""
    from fastapi.testclient import TestClient

    from smysl import Reranker
    from smysl.server import create_app
    from smysl.server.rerank_routes import Scored

    sharp = Reranker(reranker.engine, reranker.tokenizer, reranker.head * 3000, name="sharp")
    want = sharp.rerank(QUERY, DOCS)
    assert sum(s == 1.0 for _, s in want) >= 2
    with TestClient(create_app(None, reranker=sharp)) as c:
        got = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"]
        assert [(x["index"], x["relevance_score"]) for x in got] == want
        tei = c.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
        assert [x["index"] for x in tei] == [i for i, _ in want]
    ones = np.ones(3, dtype=np.float32)
    assert Scored(ones, 0, keys=np.array([17.5, 30.0, 20.0])).order() == [1, 2, 0]
    assert Scored(ones, 0).order(2) == [0, 1]


def test_a_non_finite_score_is_a_server_error_naming_the_document(reranker: Any) -> None:
    """A reranker computing NaN (a float16 overflow): a 500 naming the document, the
    server still up (it was "internal error: NonFiniteError" and a traceback)."""
    from fastapi.testclient import TestClient

    from smysl import Reranker
    from smysl.server import create_app

    broken = Reranker(reranker.engine, reranker.tokenizer, reranker.head * float("nan"),
                      name="broken")
    with TestClient(create_app(None, reranker=broken), raise_server_exceptions=False) as c:
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 500
        assert "computed a non-finite score for documents[0]" in r.json()["error"]["message"]
        assert c.get("/health").status_code == 200


def test_remote_clients_keep_the_servers_ranking_of_saturated_scores(reranker: Any) -> None:
    """`smysl:URL` and `tei:URL` re-sorted the answer by P("yes"): with every score 1.0 the
    ranking fell back to input order. Now the smysl client ranks by each result's raw_score
    (across requests too: here 3 documents a request) and both keep an answer's own order."""
    import smysl
    from smysl import Reranker

    sharp = Reranker(reranker.engine, reranker.tokenizer, reranker.head * 3000, name="sharp")
    want = sharp.rerank(QUERY, DOCS)
    assert sum(s == 1.0 for _, s in want) >= 2 and [i for i, _ in want] != sorted(
        i for i, _ in want)
    with live_server(None, sharp) as url:
        for model, options in ((f"smysl:{url}", {"max_batch_texts": 3}), (f"tei:{url}", {})):
            remote = smysl.load_reranker(model, **options)
            got = remote.rerank(QUERY, DOCS)
            assert [i for i, _ in got] == [i for i, _ in want], model
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
            remote.close()


def test_a_refused_instruction_names_the_instruction(reranker: Any) -> None:
    """audit 8: a reranker without instructions (a TEI one) answers an instruction with a 400
    whose param is "instruction"."""
    from fastapi.testclient import TestClient

    import smysl
    from smysl.server import create_app

    with live_server(None, reranker) as url:
        remote = smysl.load_reranker(f"tei:{url}")
        with TestClient(create_app(None, reranker=remote)) as c:
            r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                           "instruction": "find it"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "instruction"
            assert "takes no instruction" in r.json()["error"]["message"]
            ok = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
            assert ok.status_code == 200
            left = c.post("/rerank", json={"query": QUERY, "texts": DOCS, "truncate": True,
                                           "truncation_direction": "left"})
            assert left.status_code == 422 and "truncation_direction" in left.text
        remote.close()


def test_a_pair_that_cannot_be_cut_names_its_part(client: Any, reranker: Any) -> None:
    """A document whose kept tokens cannot be told from the characters a server reads was
    answered with param "query"; it names the document (``documents[1]``), and a query too long
    for any document still names the query."""
    odd = "ACGT" * 10_000  # no word end, few tokens a character: refused past cut_chars
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": [DOCS[0], odd],
                                        "truncate": True})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "documents", r.text
    assert err["message"].startswith("documents[1]: the tokens to keep of the document")
    long_query = "слово " * 600  # over the tiny model's 512 positions on its own
    for body in ({"query": long_query, "documents": DOCS[:1], "truncate": True},
                 {"query": long_query, "documents": DOCS[:1]}):  # the query's fault either way
        r = client.post("/v1/rerank", json=body)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "query" and "shorten the query" in (
            err["message"]), r.text


def test_rerank_takes_a_cohere_body_and_a_reranker_alone_answers_the_root(client: Any,
                                                                          reranker: Any) -> None:
    """vLLM's and Infinity's `/rerank` (litellm's ``hosted_vllm/``) send ``documents``, not
    TEI's ``texts``: it was a 422; now answered as ``/v1/rerank`` answers it. TEI's `POST /`
    runs the served model's task: on a reranker alone it was a 405."""
    want = reranker.rerank(QUERY, DOCS, top_n=2)
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200, r.text
    assert [(x["index"], x["relevance_score"]) for x in r.json()["results"]] == want
    tei = client.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert [(x["index"], x["score"]) for x in tei][:2] == want
    for path in ("/", "/invocations"):
        r = client.post(path, json={"query": QUERY, "texts": DOCS})
        assert r.status_code == 200 and r.json() == tei, (path, r.text)
    # the shape is decided by the keys: errors name one shape's fields, and a stray field
    # (top_n beside texts) does not switch the answer to Cohere's
    for body, words in (({"query": QUERY}, "texts: Field required"),
                        ({"query": QUERY, "texts": "a"}, "texts: Input should be a valid list"),
                        ({"query": QUERY, "documents": DOCS, "truncate": None},
                         "truncate: Input should be a valid boolean")):
        r = client.post("/rerank", json=body)
        assert r.status_code == 422 and r.json()["error"] == f"invalid request: {words}", r.text
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "documents": ["x"],
                                     "top_n": 1})
    assert r.status_code == 200 and isinstance(r.json(), list) and len(r.json()) == len(DOCS)
