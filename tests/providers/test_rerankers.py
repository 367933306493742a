"""Remote rerankers (issue 15) against a loopback fake of each API: model strings, request shapes
and parsing, injected 429/500 retried, malformed answers refused, long lists split in order,
instructions passed or refused, usage and cost; and a real ``smysl serve`` with a tiny
Qwen3-Reranker, whose scores a ``smysl:`` reranker must reproduce."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from provider_fakes import FakeServer, Fault, rerank_score

import smysl
from smysl.prompts import TASK_PRESETS
from smysl.providers.errors import JobTimeoutError, MalformedResponseError
from smysl.providers.rerankers import RERANK_PRESETS, RejectedRerankError, RemoteReranker
from smysl.rerank import BaseReranker

FAST: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.01}
QUERY = "Какая столица у России?"
DOCS = ["Москва — столица России.", "The quick brown fox jumps over the lazy dog.",
        "Paris is the capital of France.", "Столица — главный город страны.", "a",
        "Embeddings map text to vectors; similar texts land close together."]
INSTRUCTION = "Given a question, retrieve passages that answer it"

#: name -> (scheme, URL path under the fake's root, model, request path, instruction field).
SHAPES: dict[str, tuple[str, str, str, str, str | None]] = {
    "siliconflow": ("siliconflow", "/v1", "BAAI/bge-reranker-v2-m3", "/v1/rerank", None),
    "siliconflow-qwen3": ("siliconflow", "/v1", "Qwen/Qwen3-Reranker-8B", "/v1/rerank",
                          "instruction"),
    "deepinfra": ("deepinfra", "/v1/inference", "Qwen/Qwen3-Reranker-0.6B",
                  "/v1/inference/Qwen/Qwen3-Reranker-0.6B", None),
    "dashscope-qwen3": ("dashscope", "", "qwen3-rerank", "/compatible-api/v1/reranks",
                        "instruct"),
    "dashscope-gte": ("dashscope", "", "gte-rerank-v2",
                      "/api/v1/services/rerank/text-rerank/text-rerank", None),
    "cohere": ("cohere", "/v2", "rerank-v3.5", "/v2/rerank", None),
    "jina": ("jina", "/v1", "jina-reranker-v2-base-multilingual", "/v1/rerank", None),
    "tei": ("tei", "", "", "/rerank", None),
    "smysl": ("smysl", "", "", "/v1/rerank", "instruction"),
}


@pytest.fixture(autouse=True)
def rerank_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys for the schemes the embedding fixture does not know; no inherited Cohere key."""
    monkeypatch.setenv("COHERE_API_KEY", "sk-test")
    monkeypatch.setenv("JINA_API_KEY", "sk-test")
    monkeypatch.delenv("CO_API_KEY", raising=False)


def model_string(srv: FakeServer, shape: str) -> str:
    scheme, prefix, model, _, _ = SHAPES[shape]
    return f"{scheme}:{srv.url}{prefix}" + (f"#{model}" if model else "")


def remote(model: str, **options: Any) -> RemoteReranker:
    """``smysl.load_reranker(model)``, checked to be a remote one."""
    rr = smysl.load_reranker(model, **options)
    assert isinstance(rr, RemoteReranker)
    return rr


def load(srv: FakeServer, shape: str, **options: Any) -> RemoteReranker:
    return remote(model_string(srv, shape), **FAST, **options)


def want(query: str, docs: list[str], instruction: str | None = None) -> list[tuple[int, float]]:
    scores = [rerank_score(query, d, instruction) for d in docs]
    return sorted(enumerate(scores), key=lambda p: -p[1])


def expected_body(shape: str, docs: list[str], instruction: str | None = None,
                  truncate: bool = False) -> dict[str, Any]:
    """The exact JSON each API gets for ``rerank(QUERY, docs)``."""
    scheme, _, model, _, field = SHAPES[shape]
    n = len(docs)
    if scheme == "deepinfra":
        return {"queries": [QUERY] * n, "documents": docs}
    if scheme == "tei":
        return {"query": QUERY, "texts": docs, "truncate": truncate,
                "truncation_direction": "Right", "raw_scores": False, "return_text": False}
    if shape == "dashscope-gte":
        return {"model": model, "input": {"query": QUERY, "documents": docs},
                "parameters": {"top_n": n, "return_documents": False}}
    body: dict[str, Any] = {"query": QUERY, "documents": docs, "top_n": n}
    if model:
        body["model"] = model
    if scheme in ("siliconflow", "jina"):
        body["return_documents"] = False
    if scheme == "smysl":
        body["truncate"] = truncate
        body["raw_scores"] = True
    if instruction is not None and field is not None:
        body[field] = instruction
    return body


# ----------------------------------------------------------------------------- model strings
def test_model_strings_reach_each_api_with_its_documented_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 15: ``smysl.load_reranker("siliconflow:BAAI/bge-reranker-v2-m3")`` and every other
    scheme build the right backend, URL, path, limits and instruction support."""
    cases = {
        "siliconflow:BAAI/bge-reranker-v2-m3": (
            "SiliconFlowReranker", "https://api.siliconflow.com/v1", "/rerank", 256, False),
        "siliconflow:Qwen/Qwen3-Reranker-8B": (
            "SiliconFlowReranker", "https://api.siliconflow.com/v1", "/rerank", 256, True),
        "deepinfra:Qwen/Qwen3-Reranker-8B": (
            "DeepInfraReranker", "https://api.deepinfra.com/v1/inference",
            "/Qwen/Qwen3-Reranker-8B", 256, False),
        "dashscope:qwen3-rerank": ("DashScopeReranker", "https://dashscope-intl.aliyuncs.com",
                                   "/compatible-api/v1/reranks", 500, True),
        "dashscope:gte-rerank-v2": ("DashScopeReranker", "https://dashscope.aliyuncs.com",
                                    "/api/v1/services/rerank/text-rerank/text-rerank", 500,
                                    False),
        "cohere:rerank-v3.5": ("CohereReranker", "https://api.cohere.com/v2", "/rerank", 1000,
                               False),
        "cohere:http://gpu-box:8000/v1#BAAI/bge-reranker-v2-m3": (
            "CohereReranker", "http://gpu-box:8000/v1", "/rerank", 1000, False),
        "jina:jina-reranker-v2-base-multilingual": (
            "JinaReranker", "https://api.jina.ai/v1", "/rerank", 256, False),
        "tei:http://gpu-box:8080": ("TEIReranker", "http://gpu-box:8080", "/rerank", 32, False),
        "tei:gpu-box:8080": ("TEIReranker", "http://gpu-box:8080", "/rerank", 32, False),
        "smysl:http://gpu-box:8000": ("SmyslReranker", "http://gpu-box:8000/v1", "/rerank",
                                      2048, True),
        "smysl:http://gpu-box:8000/v1#Qwen/Qwen3-Reranker-0.6B": (
            "SmyslReranker", "http://gpu-box:8000/v1", "/rerank", 2048, True),
    }
    for string, (cls, base, path, docs, aware) in cases.items():
        rr = remote(string)
        assert isinstance(rr, BaseReranker)
        got = (type(rr).__name__, rr.base_url, rr.config.path, rr.config.max_batch_texts,
               rr.instruction_aware)
        assert got == (cls, base, path, docs, aware), string
        assert rr.source == string and rr.info().backend == string.split(":")[0]
        rr.close()
    assert remote("dashscope:gte-rerank-v2").config.max_batch_tokens == 30_000
    assert remote("dashscope:qwen3-rerank").config.max_batch_tokens == 120_000

    # The embedding providers' base-URL variables serve the rerankers too.
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "https://dashscope.aliyuncs.com/compatible-mode/v1")
    monkeypatch.setenv("DEEPINFRA_BASE_URL", "https://api.deepinfra.com/v1/openai")
    monkeypatch.setenv("SMYSL_URL", "http://gpu-box:9000")
    assert remote("dashscope:qwen3-rerank").base_url == \
        "https://dashscope.aliyuncs.com"
    assert remote("deepinfra:Qwen/Qwen3-Reranker-4B").base_url == \
        "https://api.deepinfra.com/v1/inference"
    assert remote("smysl:").base_url == "http://gpu-box:9000/v1"
    # Options: config fields and an explicit base URL; unknown ones refused.
    rr = remote("cohere:rerank-v3.5", base_url="http://proxy:1/v2",
                             max_batch_texts=7, timeout=3.0)
    assert (rr.base_url, rr.config.max_batch_texts, rr.config.timeout) == \
        ("http://proxy:1/v2", 7, 3.0)
    with pytest.raises(TypeError, match="unexpected options"):
        remote("cohere:rerank-v3.5", dimensions=5)
    with pytest.raises(ValueError, match="no model"):
        remote("siliconflow:")
    with pytest.raises(ValueError, match="no model"):
        remote("cohere:")
    with pytest.raises(ValueError, match="device"):  # engine options are not for APIs
        remote("cohere:rerank-v3.5", device="cpu")
    # Paid APIs want their key; a server of one's own does not.
    monkeypatch.delenv("COHERE_API_KEY")
    with pytest.raises(ValueError, match=r"\$COHERE_API_KEY or \$CO_API_KEY"):
        remote("cohere:rerank-v3.5")
    assert remote("cohere:http://gpu-box:8000/v1").model == ""
    assert set(RERANK_PRESETS) == {"siliconflow", "deepinfra", "dashscope", "cohere", "jina",
                                   "tei", "smysl"}


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_api_gets_its_documented_request_and_scores_land_in_input_order(
        shape: str) -> None:
    """The exact request body and path per API; the answer (best first, any order) is read back
    into input order; usage counts what the API reported."""
    with FakeServer() as srv:
        rr = load(srv, shape)
        got = rr.rerank(QUERY, DOCS)
        assert srv.paths == [SHAPES[shape][3]]
        assert srv.requests == [expected_body(shape, DOCS)]
        assert [i for i, _ in got] == [i for i, _ in want(QUERY, DOCS)]
        assert got == want(QUERY, DOCS)  # JSON round-trips a float exactly
        assert rr.rerank(QUERY, DOCS, top_n=2) == got[:2]
        assert srv.headers_seen[0]["Authorization"] == "Bearer sk-test"
        u = rr.usage
        assert (u.requests, u.texts, u.retries) == (2, 2 * len(DOCS), 0)
        if shape in ("tei", "cohere"):  # no token counts in their answers
            assert u.tokens == 0 and "tokens not reported" in rr.usage_report()
        else:
            assert u.tokens == srv.billed_tokens > 0
        if shape == "cohere":
            assert u.search_units == 2
        rr.close()


def test_score_pairs_groups_by_query() -> None:
    with FakeServer() as srv:
        rr = load(srv, "jina")
        pairs = [("q1", "a"), ("q2", "b"), ("q1", "c")]
        assert rr.score(pairs) == pytest.approx([rerank_score(q, d) for q, d in pairs])
        assert len(srv.requests) == 2  # one per query


# ----------------------------------------------------------------------------- faults
@pytest.mark.parametrize("shape", ["siliconflow", "deepinfra", "dashscope-gte", "tei", "smysl"])
def test_429_and_500_are_retried_and_the_answer_is_still_right(shape: str) -> None:
    with FakeServer() as srv:
        srv.script.extend([Fault(429, {"Retry-After": "0"}, '{"error": "slow down"}'),
                           Fault(500, {}, '{"error": "boom"}')])
        rr = load(srv, shape, max_retries=3)
        assert rr.rerank(QUERY, DOCS) == want(QUERY, DOCS)
        assert srv.faults == 2 and rr.usage.retries == 2 and rr.usage.requests == 1
        assert rr.usage.failed_requests == 0


def test_long_lists_are_split_within_the_limit_concurrently_in_order_under_faults() -> None:
    """1,234 documents to an API that takes 500 per request, 20 % injected 429/500: every
    request within the limit, every score in its place, one retry per fault, usage summed."""
    docs = [f"{i}: документ номер {i} " + "слово " * (i % 7) for i in range(1234)]
    with FakeServer(rerank_max_docs=500, p429=0.1, p500=0.1, seed=3) as srv:
        srv.script.extend([Fault(429, {"Retry-After": "0"}, "{}"), Fault(500, {}, "{}")])
        rr = load(srv, "dashscope-gte", max_retries=10, max_concurrency=4)
        got = rr.rerank(QUERY, docs)
        assert got == want(QUERY, docs)
        u = rr.usage
        assert srv.faults > 0 and u.retries == srv.faults
        assert u.requests == srv.ok_requests >= 3 and u.texts == len(srv.billed_texts) == len(docs)
        assert u.tokens == srv.billed_tokens
        # Each request: at most 500 documents (the API's maximum) and, by the UTF-8 byte bound
        # of query + document per pair, at most gte-rerank-v2's 30,000 tokens.
        for body in srv.requests:
            sent = body["input"]["documents"]
            assert len(sent) <= 500
            assert sum(len(QUERY.encode()) + len(d.encode()) + 2 for d in sent) <= 30_000


@pytest.mark.parametrize("shape", ["tei", "cohere", "smysl"])
def test_equal_scores_in_different_requests_rank_in_input_order(shape: str) -> None:
    """A review's: ties were broken by each document's place in its own answer, a count that
    restarts with every request: an equal document placed first in the second request went
    before one placed last in the first ("ties: input order", as the local reranker has it)."""
    pool = [f"кандидат {i}" for i in range(40)]
    score = {d: rerank_score(QUERY, d) for d in pool}
    tie = sorted(pool, key=score.__getitem__)[20]  # a middling document, sent twice
    above = [d for d in pool if score[d] > score[tie]][:2]
    below = [d for d in pool if score[d] < score[tie]][:2]
    # request 1: two better ones, then the tie (its place: 2); request 2: the tie first (0)
    docs = [*above, tie, tie, *below]
    with FakeServer() as srv:
        got = load(srv, shape, max_batch_texts=3).rerank(QUERY, docs)
    assert [i for i, _ in got] == sorted(
        range(6), key=lambda i: (-score[docs[i]], i))
    assert got[2][0] == 2 and got[3][0] == 3


def test_equal_scores_in_a_batch_a_413_split_rank_in_input_order() -> None:
    """A review's: a batch split after a 413 wrote each piece's places counting from 0 again
    under the batch's one origin: ties across the pieces went by those places."""
    pool = [f"кандидат {i}" for i in range(40)]
    score = {d: rerank_score(QUERY, d) for d in pool}
    tie = sorted(pool, key=score.__getitem__)[20]
    above = [d for d in pool if score[d] > score[tie]][:2]
    below = [d for d in pool if score[d] < score[tie]][:2]
    docs = [*above, tie, tie, *below]  # one planned batch; TEI takes 3: two requests
    with FakeServer(tei_max_batch=3) as srv:
        got = load(srv, "tei", max_concurrency=1).rerank(QUERY, docs)
        assert max(len(b["texts"]) for b in srv.requests) == 6  # planned as one, refused
    assert [i for i, _ in got] == sorted(range(6), key=lambda i: (-score[docs[i]], i))


def test_split_keeps_order_for_cohere_and_counts_search_units() -> None:
    docs = [f"doc {i}" for i in range(2500)]
    with FakeServer(rerank_max_docs=1000) as srv:
        rr = load(srv, "cohere", price_per_search_unit=0.002)
        assert rr.rerank(QUERY, docs) == want(QUERY, docs)
        # Concurrent requests arrive in any order; each is a consecutive slice of the list.
        firsts = sorted(int(b["documents"][0].split()[1]) for b in srv.requests)
        assert firsts == [0, 1000, 2000]
        assert sorted(len(b["documents"]) for b in srv.requests) == [500, 1000, 1000]
        assert all(b["top_n"] == len(b["documents"]) for b in srv.requests)
        assert rr.usage.search_units == 25
        assert rr.usage.cost == pytest.approx(25 * 0.002)
        assert "25 search units" in rr.usage_report() and "$0.002/search unit" in \
            rr.usage_report()


def test_413_halves_the_batch_for_this_and_later_calls() -> None:
    """TEI's default max-client-batch-size is 32; a server started with 8 answers 413."""
    docs = [f"текст {i}" for i in range(50)]
    with FakeServer(tei_max_batch=8) as srv:
        rr = load(srv, "tei", max_concurrency=1)  # one at a time: the halving is exact
        assert rr.rerank(QUERY, docs) == want(QUERY, docs)
        assert rr._batch_limit.size == 8 and max(len(b["texts"]) for b in srv.requests) == 32
        n = len(srv.requests)
        rr.rerank(QUERY, docs)
        assert len(srv.requests) - n == 7  # ceil(50 / 8), no 413 any more


def test_one_document_tei_refuses_leaves_the_batch_size() -> None:
    """TEI answers an over-long pair (without truncation) with 413 too: bisected down to that
    document it is a RejectedRerankError, and the 413s that led there do not cut later calls
    to one document per request (they did: every later call sent 32 single requests)."""
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sizes.append(len(body["texts"]))
        if any(len(t) > 100 for t in body["texts"]):
            return httpx.Response(413, json={"error": "`inputs` must have less than 512 tokens",
                                             "error_type": "Validation"})
        return httpx.Response(200, json=[{"index": i, "score": 1.0 / (i + 1)}
                                         for i in range(len(body["texts"]))])

    rr = remote("tei:http://tei:8080", transport=httpx.MockTransport(handler),
                max_concurrency=1, **FAST)
    with pytest.raises(RejectedRerankError, match="document 31 was refused as too large"):
        rr.rerank(QUERY, [f"d{i}" for i in range(31)] + ["x" * 500])
    sizes.clear()
    rr.rerank(QUERY, [f"d{i}" for i in range(64)])
    assert sizes == [32, 32]


def test_slow_calls_stop_at_job_timeout() -> None:
    with FakeServer() as srv:
        srv.script.extend([Fault(delay=1.0)] * 3)
        rr = load(srv, "jina", timeout=0.2, job_timeout=0.5)
        # past it, or about to be with the next try's wait (which one: the machine's load
        # decides; CI under load met the second)
        with pytest.raises(JobTimeoutError, match=r"rerank call ran past job_timeout|the next "
                                                  r"try would wait .* past it"):
            rr.rerank(QUERY, DOCS)


# ----------------------------------------------------------------------------- malformed
def _dup(body: Any) -> Any:
    body["results"][1]["index"] = body["results"][0]["index"]
    return body


MALFORMED: dict[str, tuple[str, Any, str]] = {
    "duplicate index": ("jina", _dup, "appears twice"),
    "missing document": ("jina", lambda b: {**b, "results": b["results"][:-1]},
                         "1 of the 6 documents asked for have no score"),
    "index out of range": ("siliconflow", lambda b: {**b, "results": [
        {**r, "index": r["index"] + 6} if k == 0 else r for k, r in enumerate(b["results"])]},
        "not one of 0..5"),
    "NaN score": ("smysl", lambda b: {**b, "results": [
        {**r, "relevance_score": math.nan} if k == 2 else r
        for k, r in enumerate(b["results"])]}, "not a finite number"),
    "string score": ("dashscope-qwen3", lambda b: {**b, "results": [
        {**r, "relevance_score": "0.5"} for r in b["results"]]}, "not a finite number"),
    "boolean index": ("cohere", lambda b: {**b, "results": [
        {**r, "index": True} for r in b["results"]]}, "has index True"),
    "no results": ("dashscope-gte", lambda b: {"output": {}, "usage": b["usage"]}, "results"),
    "short score list": ("deepinfra", lambda b: {**b, "scores": b["scores"][:-1]},
                         "5 scores for 6 documents"),
    "bare list expected": ("tei", lambda b: {"results": b}, "not a list"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_answers_are_retried_then_refused_naming_the_provider(case: str) -> None:
    shape, mutate, message = MALFORMED[case]
    with FakeServer() as srv:
        srv.script.extend([Fault(mutate=mutate), Fault(mutate=mutate)])
        rr = load(srv, shape, max_retries=1)
        with pytest.raises(MalformedResponseError, match=message) as err:
            rr.rerank(QUERY, DOCS)
        assert rr.name in str(err.value) and "gave up after 2 attempts" in str(err.value)
        # both answers were billed: counted (they were not)
        assert rr.usage.failed_requests == 1 and rr.usage.requests == 2
        assert rr.usage.texts == 2 * len(DOCS)
        # One bad answer, then a good one: retried and right.
        srv.script.append(Fault(mutate=mutate))
        assert rr.rerank(QUERY, DOCS) == want(QUERY, DOCS)


def test_an_answer_malformed_twice_is_not_bought_again() -> None:
    """A Cohere-compatible gateway that caps its results answers every repeat the same way; each
    answer is billed. It was sent 7 times (max_retries 6) and counted as none; now twice, and
    both answers' search units count."""
    with FakeServer() as srv:
        short = Fault(mutate=lambda b: {**b, "results": b["results"][:3]})
        srv.script.extend([short, short])
        rr = load(srv, "cohere")
        assert rr.config.max_retries > 2
        with pytest.raises(MalformedResponseError, match="not tried again") as err:
            rr.rerank(QUERY, DOCS)
        assert "3 of the 6 documents asked for have no score" in str(err.value)
        assert len(srv.requests) == 2
        assert (rr.usage.requests, rr.usage.retries, rr.usage.failed_requests) == (2, 1, 1)
        assert rr.usage.search_units == 2
        # a malformed answer, then a retryable status, then a good one: lands right
        srv.script.extend([short, Fault(status=503), Fault(status=503)])
        assert rr.rerank(QUERY, DOCS) == want(QUERY, DOCS)


# ----------------------------------------------------------------------------- instructions
@pytest.mark.parametrize("shape", ["siliconflow-qwen3", "dashscope-qwen3", "smysl"])
def test_instruction_is_sent_where_the_api_takes_one(shape: str) -> None:
    with FakeServer() as srv:
        rr = load(srv, shape)
        assert rr.instruction_aware
        got = rr.rerank(QUERY, DOCS, instruction=INSTRUCTION)
        assert srv.requests[-1] == expected_body(shape, DOCS, INSTRUCTION)
        assert got == want(QUERY, DOCS, INSTRUCTION)
        assert got != want(QUERY, DOCS)
        # a preset's name is sent as its sentence (it was sent as the word "qa")
        rr.rerank(QUERY, DOCS, instruction="qa")
        assert srv.requests[-1] == expected_body(shape, DOCS, TASK_PRESETS["qa"])


@pytest.mark.parametrize("shape", ["siliconflow", "deepinfra", "dashscope-gte", "cohere", "jina",
                                   "tei"])
def test_instruction_is_refused_where_the_api_takes_none(shape: str) -> None:
    with FakeServer() as srv:
        rr = load(srv, shape)
        assert not rr.instruction_aware
        with pytest.raises(ValueError, match="takes no instruction"):
            rr.rerank(QUERY, DOCS, instruction=INSTRUCTION)
        assert srv.requests == []  # refused before anything is spent


@pytest.mark.parametrize("shape", ["tei", "smysl"])
def test_truncate_is_passed_where_the_api_has_it(shape: str) -> None:
    with FakeServer() as srv:
        load(srv, shape).rerank(QUERY, DOCS, truncate=True)
        assert srv.requests[-1] == expected_body(shape, DOCS, truncate=True)


# ----------------------------------------------------------------------------- rejections
def test_rejected_inputs_raise_a_value_error_at_once() -> None:
    with FakeServer(rerank_max_docs=3) as srv:
        rr = load(srv, "jina", max_batch_texts=10, max_retries=5)
        with pytest.raises(RejectedRerankError, match=r"documents 0\.\.5: .*HTTP 400") as err:
            rr.rerank(QUERY, DOCS)
        assert isinstance(err.value, ValueError) and err.value.status == 400
        assert len(srv.requests) == 1 and rr.usage.retries == 0
        assert "truncate flag" not in str(err.value)
        # a review's: --truncate on a Cohere/Jina-compatible URL was dropped without a word
        with pytest.raises(RejectedRerankError, match=r"this API takes no truncate flag: long "
                           r"documents are cut, or refused, by its own length limit\)"):
            rr.rerank(QUERY, DOCS, truncate=True)
    with FakeServer(rerank_max_docs=3) as srv:  # smysl's flag is sent: no such hint
        with pytest.raises(RejectedRerankError, match="HTTP 400") as err:
            load(srv, "smysl", max_batch_texts=10, max_retries=5).rerank(QUERY, DOCS,
                                                                         truncate=True)
        assert "truncate flag" not in str(err.value)


def test_a_single_document_refused_as_too_large_is_a_value_error() -> None:
    with FakeServer(tei_max_batch=0) as srv:  # answers 413 to everything
        rr = load(srv, "tei")
        with pytest.raises(RejectedRerankError, match="document 0 was refused as too large"):
            rr.rerank(QUERY, ["x" * 10])


def test_unknown_model_is_a_404_with_a_hint() -> None:
    from smysl.providers.errors import ProviderHTTPError

    with FakeServer(models={"rerank-v3.5"}) as srv:
        rr = remote(f"cohere:{srv.url}/v2#nope", **FAST)
        with pytest.raises(ProviderHTTPError, match="unknown model 'nope'") as err:
            rr.rerank(QUERY, DOCS)
        assert err.value.status == 404 and len(srv.requests) == 1


# ----------------------------------------------------------------------------- usage, cost
def test_usage_and_cost_from_the_price_tables() -> None:
    with FakeServer() as srv:
        rr = load(srv, "dashscope-qwen3")
        rr.rerank(QUERY, DOCS)
        rr.rerank(QUERY, DOCS[:2])
        u = rr.usage
        assert (u.requests, u.texts, u.tokens) == (2, 8, srv.billed_tokens)
        assert u.cost == pytest.approx(srv.billed_tokens * 0.1 / 1e6)
        line = rr.usage_report()
        assert line.startswith("dashscope:qwen3-rerank: ") and "(provider-reported)" in line
        assert "8 documents, 2 requests, 0 retries" in line and "$0.1/1M tokens" in line
        snap = u.snapshot()
        assert snap["search_units"] == 0 and snap["cost"] == u.cost
        u.reset()
        assert (u.requests, u.tokens, u.token_reports) == (0, 0, 0)
    # DeepInfra's documented price per model; a Cohere-compatible URL of one's own: no price.
    assert remote("deepinfra:Qwen/Qwen3-Reranker-0.6B").usage.price_per_mtok == 0.01
    assert remote("deepinfra:Qwen/Qwen3-Reranker-4B").usage.cost is None
    assert remote("cohere:rerank-v3.5").usage.price_per_search_unit == 0.002
    assert remote("cohere:http://box:1/v1#m").usage.cost is None
    assert remote("smysl:http://box:1").usage.cost == 0.0


def test_remote_rerankers_need_no_torch() -> None:
    """A fresh interpreter where ``import torch`` fails loads and calls a remote reranker."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import smysl\n"
            "rr = smysl.load_reranker(sys.argv[1], backoff_base=0.001)\n"
            "print(rr.rerank(sys.argv[2], ['a', 'b'])[0][0], 'torch' in sys.modules and "
            "sys.modules['torch'] is not None)\n")
    with FakeServer() as srv:
        out = subprocess.run([sys.executable, "-c", code, f"jina:{srv.url}/v1#m", QUERY],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    best = max(range(2), key=lambda i: rerank_score(QUERY, "ab"[i]))
    assert out.stdout.split() == [str(best), "False"]


# ----------------------------------------------------------------------------- a real smysl
def test_another_smysl_gives_the_in_process_scores(tmp_path: Path) -> None:
    """issue 15: ``smysl.load_reranker("smysl:" + url)`` against a live ``smysl serve
    --reranker`` gives the in-process scores (<= 1e-6) in the same order, with and without an
    instruction; truncation is the server's, an over-long document without it a ValueError."""
    pytest.importorskip("torch")
    from live_http import live_server
    from qwen_tiny import build_tiny_reranker

    path = build_tiny_reranker(tmp_path / "rr", seed=7).path
    local = smysl.Reranker.load(str(path), device="cpu")
    try:
        with live_server(None, local) as url:
            other = smysl.load_reranker("smysl:" + url)
            assert isinstance(other, RemoteReranker) and other.instruction_aware
            for instruction in (None, INSTRUCTION):
                mine = local.rerank(QUERY, DOCS, instruction=instruction)
                theirs = other.rerank(QUERY, DOCS, instruction=instruction)
                assert [i for i, _ in theirs] == [i for i, _ in mine]
                assert max(abs(a - b) for (_, a), (_, b) in zip(theirs, mine, strict=True)) \
                    <= 1e-6
            long_doc = "слово " * 2000
            with pytest.raises(RejectedRerankError) as err:
                other.rerank(QUERY, [DOCS[0], long_doc])
            assert isinstance(err.value, ValueError) and err.value.status == 400
            cut = other.rerank(QUERY, [DOCS[0], long_doc], truncate=True)
            mine = local.rerank(QUERY, [DOCS[0], long_doc], truncate=True)
            assert [i for i, _ in cut] == [i for i, _ in mine]
            assert max(abs(a - b) for (_, a), (_, b) in zip(cut, mine, strict=True)) <= 1e-6
            assert other.usage.requests == 3 and other.usage.tokens > 0
            assert other.usage.cost == 0.0
            other.close()
    finally:
        local.close()


def test_a_served_remote_reranker_passes_on_what_failed_upstream() -> None:
    """A remote reranker's upstream 429 was a 500 "internal error" from `smysl serve
    --reranker cohere:...`; its timeout was the server's own "did not answer within the
    server's time budget"."""
    from fastapi.testclient import TestClient
    from provider_fakes import Fault

    from smysl.server import ServerConfig, create_app

    with FakeServer() as srv:
        rr = load(srv, "cohere", max_retries=0, timeout=0.5)
        with TestClient(create_app(None, ServerConfig(), reranker=rr)) as c:
            for fault, status, wait in ((Fault(429, {"Retry-After": "3"}), 429, "3"),
                                        (Fault(502), 502, None), (Fault(delay=2.0), 504, None)):
                srv.script.append(fault)
                r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
                assert (r.status_code, r.headers.get("retry-after")) == (status, wait), r.text
                assert "the upstream of" in r.text
            # an input the upstream refused stays the client's error: 400, TEI's 422
            for path, body, status in (("/v1/rerank", {"query": QUERY, "documents": DOCS}, 400),
                                       ("/rerank", {"query": QUERY, "texts": DOCS}, 422)):
                srv.script.append(Fault(400, body='{"message": "document too long"}'))
                r = c.post(path, json=body)
                assert r.status_code == status and "document too long" in r.text, r.text
        rr.close()
