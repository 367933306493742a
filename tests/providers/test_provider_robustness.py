"""Issue 11 regressions for providers: rows that are no embeddings (item 4), wall-clock
deadlines and health (item 7), the offline tokenizer lookup (item 9), and partial failures
that keep paid-for rows and resume (item 9a)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import numpy as np
import pytest
from provider_fakes import FakeServer, Fault, expected

import smysl
from smysl.pooling import finish
from smysl.providers import (
    IncompleteEmbeddingError,
    PartialEmbeddingError,
    Provider,
    ProviderConfig,
    connect,
)
from smysl.providers import retry as retry_module
from smysl.providers import tokens as tokens_module
from smysl.providers.errors import JobTimeoutError, ProviderError, RequestTimeoutError

FAST = {"backoff_base": 0.001, "backoff_max": 0.01}


def dashscope(srv: FakeServer, **options: Any) -> Provider:
    return connect("dashscope", f"{srv.url}/compatible-mode/v1#text-embedding-v4",
                   **{**FAST, **options})


# ----------------------------------------------------------------------------- item 4
def _answer(second_row: Any) -> httpx.MockTransport:
    """An OpenAI-shaped upstream whose second row is always ``second_row`` (raw JSON)."""
    good = json.dumps([0.5] * 64)

    def handler(request: httpx.Request) -> httpx.Response:
        text = ('{"data": [{"index": 0, "embedding": ' + good + '}, {"index": 1, '
                '"embedding": ' + second_row + '}], "usage": {"prompt_tokens": 4}}')
        return httpx.Response(200, text=text)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(("row", "what"), [
    (json.dumps([0.0] * 64), "is all zeros"),
    (json.dumps([3e38] * 64), "norm overflows float32"),
    (json.dumps([1e-40] * 64), "norm underflows to 0"),
    (json.dumps([0.0] * 32 + [1.0] * 32), "first 32 values all zero"),
    (json.dumps([0.5] * 63 + [True]), "non-number at position 63: True"),
    (json.dumps(["0.5"] * 64), "non-number at position 0: '0.5'"),
    (json.dumps([0.5] * 10 + [None] * 54), "non-number at position 10: None"),
    ("[" + ", ".join(["0.5"] * 63 + ["NaN"]) + "]", "non-finite value at position 63"),
    (json.dumps([0.5] * 63 + [1e39]), "non-finite value at position 63: 1e+39"),
    (json.dumps([0.5] * 63), "has 63 values, expected 64"),
    (json.dumps({"vector": [0.5] * 64}), "is a dict, not a list of numbers"),
])
def test_rows_that_are_no_embeddings_are_errors(row: str, what: str) -> None:
    """Issue 11 item 4: zero, overflowing, denormal, non-numeric (booleans, strings, null),
    non-finite and wrong-width rows raise an error naming the provider, the row and the
    input; the old code returned zero vectors for most of them."""
    p = connect("openai", "m", transport=_answer(row), dimensions=64, max_retries=1, **FAST)
    p.sleep = lambda s: None
    with pytest.raises(IncompleteEmbeddingError) as e:
        p.embed(["first", "second"])
    message = str(e.value)
    assert "openai:m: row 1 of the response (input #1)" in message and what in message
    assert e.value.done == [] and e.value.failed == [0, 1]
    assert p.usage.retries == 1  # retried like any malformed body, then reported


def test_a_bad_row_once_is_retried_and_lands_right() -> None:
    """Issue 11 item 4: a glitch (one zero row) costs one retry, never a zero vector."""
    texts = ["a", "b", "c"]
    with FakeServer(dims=32) as srv:
        zero_second = Fault(mutate=lambda b: {**b, "data": [
            {**d, "embedding": [0.0] * 32} if d["index"] == 1 else d for d in b["data"]]})
        srv.script.append(zero_second)
        m = dashscope(srv, dimensions=32)
        out = m.embed(texts)
    np.testing.assert_allclose(out, expected(texts, 32, 32), rtol=1e-5)
    assert np.all(np.linalg.norm(out, axis=1) > 0.99) and m.usage.retries == 1


# ----------------------------------------------------------------------------- item 7
def test_a_dripping_body_times_out_on_wall_time() -> None:
    """Issue 11 item 7: ``timeout`` bounds the whole request. A body dripping a byte every
    50 ms (about 40 s in all) ends after ``timeout=0.5`` s, not after the last byte."""
    with FakeServer(dims=32) as srv:
        srv.script.append(Fault(drip=0.05))
        m = dashscope(srv, dimensions=32, timeout=0.5, max_retries=0)
        t0 = time.perf_counter()
        with pytest.raises(IncompleteEmbeddingError) as e:
            m.embed(["a"])
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.5
    assert isinstance(e.value.cause.__cause__, RequestTimeoutError)
    assert "no complete answer within timeout=0.5s" in str(e.value)
    assert "pass timeout=SECONDS" in str(e.value)


def test_a_dripping_body_is_retried_within_the_deadline() -> None:
    """Issue 11 item 7: the timed-out request is retried and the retry's answer is used."""
    with FakeServer(dims=32) as srv:
        srv.script.append(Fault(drip=0.05))
        m = dashscope(srv, dimensions=32, timeout=0.5)
        out = m.embed(["a", "b"])
    np.testing.assert_allclose(out, expected(["a", "b"], 32, 32), rtol=1e-5)
    assert m.usage.retries == 1


def test_the_job_deadline_bounds_retries_of_a_hanging_upstream() -> None:
    """Issue 11 item 7: an upstream that never answers costs ``job_timeout``, not
    (max_retries + 1) x timeout; the error names the limit and how to change it."""
    with FakeServer(dims=32) as srv:
        srv.script.extend(Fault(delay=5.0) for _ in range(20))
        m = dashscope(srv, dimensions=32, timeout=0.4, job_timeout=1.0, max_retries=6)
        t0 = time.perf_counter()
        with pytest.raises(IncompleteEmbeddingError) as e:
            m.embed(["a"])
        elapsed = time.perf_counter() - t0
    assert 0.9 < elapsed < 1.8
    assert isinstance(e.value.cause, JobTimeoutError)
    assert "job_timeout=1s" in str(e.value) and "Pass job_timeout=SECONDS" in str(e.value)


def test_the_job_deadline_bounds_the_width_probe_too() -> None:
    """A self-hosted server of unknown width is probed first: that request ran outside the
    call's deadline (16.6 s for job_timeout=2; ~7 minutes with the defaults) and failed as a
    bare RetriesExhaustedError instead of the call's IncompleteEmbeddingError."""
    with FakeServer(dims=32) as srv:
        srv.script.extend(Fault(delay=5.0) for _ in range(20))
        m = smysl.load(f"tei:{srv.url}", timeout=0.4, job_timeout=1.0, max_retries=6)
        t0 = time.perf_counter()
        with pytest.raises(IncompleteEmbeddingError) as e:
            m.embed(["a", "b"])
        elapsed = time.perf_counter() - t0
    assert 0.9 < elapsed < 1.8
    assert isinstance(e.value.cause, JobTimeoutError) and e.value.failed == [0, 1]


def test_deadline_defaults_are_finite() -> None:
    """Issue 11 item 7: with defaults a hanging upstream is bounded (it took 444 s)."""
    cfg = ProviderConfig(name="x", base_url="http://x")
    assert cfg.timeout == 60 and cfg.job_timeout == 300
    with pytest.raises(ValueError, match="job_timeout"):
        ProviderConfig(name="x", base_url="http://x", job_timeout=0)


def test_health_follows_an_upstream_that_stops_answering(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 7: ``healthy`` is False after requests to an upstream stop getting
    answers, and a background probe (one short text) brings it back without other traffic."""
    monkeypatch.setattr(retry_module, "PROBE_INTERVAL", 0.05)
    with FakeServer(dims=32) as srv:
        m = dashscope(srv, dimensions=32, timeout=0.3, max_retries=1)
        m.embed(["a"])
        assert m.healthy
        srv.script.extend([Fault(delay=2.0), Fault(delay=2.0)])
        with pytest.raises(IncompleteEmbeddingError, match="no complete answer"):
            m.embed(["b"])
        assert not m.healthy  # two attempts in a row without an answer; a probe starts
        deadline = time.monotonic() + 3
        while not m.healthy and time.monotonic() < deadline:
            time.sleep(0.02)
        assert m.healthy  # the probe got an answer
        assert len(srv.requests) == 4 and srv.requests[-1]["input"] == ["health probe"]
        assert m.usage.requests == 2  # the probe is billed, so it is counted


def test_health_of_a_refused_upstream() -> None:
    """Issue 11 item 7: a refused connection counts as no answer too."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = smysl.load(f"openai:http://127.0.0.1:{port}/v1#m", dimensions=32, max_retries=1,
                   **FAST)
    assert m.healthy
    with pytest.raises(IncompleteEmbeddingError, match="connection error"):
        m.embed(["a"])
    assert not m.healthy


@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer:RuntimeWarning")
def test_serve_health_reports_a_provider_upstream_that_hangs() -> None:
    """Issue 11 item 7: ``smysl serve`` in front of a hanging provider: ``/health`` said 200
    while every request stalled; now requests end at the deadline and ``/health`` is 503."""
    from live_http import live_server


    with FakeServer(dims=32) as upstream:
        provider = dashscope(upstream, dimensions=32, timeout=0.3, max_retries=1,
                             job_timeout=2.0)
        with live_server(provider) as url:
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            upstream.script.extend(Fault(delay=3.0) for _ in range(8))  # probes hang too
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/embeddings", json={"input": ["x"], "model": provider.name},
                           timeout=30)
            assert r.status_code >= 500 and time.perf_counter() - t0 < 2.5, r.text
            assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        provider.close()


# ----------------------------------------------------------------------------- item 9
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable hub"])
def test_tokenizer_lookup_fails_fast_without_a_network(how: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 9: no cached tokenizer and no network used to stall ~23 s in download
    retries; now the lookup gives up within about a second and usage falls back to a bound."""
    monkeypatch.setattr(tokens_module, "_hub_down_until", 0.0)
    listener = socket.socket()  # accepts connections (backlog) and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        if how == "unreachable hub":
            monkeypatch.setenv("HF_HUB_OFFLINE", "0")
            monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
        t0 = time.perf_counter()
        with pytest.warns(RuntimeWarning, match="no Qwen3 tokenizer"):
            assert tokens_module.find_tokenizer() is None
        assert time.perf_counter() - t0 < 2.0
        with FakeServer(dims=32) as srv:  # a provider without usage (TEI) does not stall
            m = connect("tei", srv.url, dimensions=32, **FAST)
            t0 = time.perf_counter()
            with pytest.warns(RuntimeWarning):
                m.embed(["abc"])
            assert time.perf_counter() - t0 < 2.0 and m.usage.estimated_tokens == 4
    finally:
        listener.close()


# ----------------------------------------------------------------------------- item 9a
def test_partial_failure_keeps_paid_rows_and_resumes(qwen_tok: Any) -> None:
    """Issue 11 item 9a: 35% injected 429/500/drops and a server that takes at most 16 inputs
    (413) over 600 inputs. A call that fails part-way raises PartialEmbeddingError with the
    finished rows; calling embed again sends only the missing inputs, in batches of the
    learned size; in the end every row is right and no input was billed twice."""
    texts = [f"{i}: смысл {i % 7} vector" for i in range(600)]
    with FakeServer(dims=32, tokenizer=qwen_tok, p429=0.15, p500=0.1, pdrop=0.1,
                    too_large=16, seed=11) as srv:
        # No retries: a faulted request fails its sub-batch, so calls do break part-way.
        m = connect("openai", f"{srv.url}/v1#m", dimensions=32, max_batch_texts=64,
                    max_retries=0, max_concurrency=4, **FAST)
        partials = 0
        for _ in range(200):
            try:
                out = m.embed(texts)
                break
            except PartialEmbeddingError as e:
                partials += 1
                assert sorted(e.done + e.failed) == list(range(600)) and e.total == 600
                want = expected([texts[i] for i in e.done], 32, 32)
                got = finish(e.rows, 32)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
                assert "finished rows are kept" in str(e)
            except IncompleteEmbeddingError:
                partials += 1  # nothing new finished this time; try again
        else:
            pytest.fail("never completed")
        assert partials >= 1  # the injected faults did break some calls
        np.testing.assert_allclose(out, expected(texts, 32, 32), rtol=1e-5, atol=1e-6)
        sizes = [len(b["input"]) for b in srv.requests]
        # Only the batches in flight when a 413 came back (64, then 32; at most 4 each) were
        # refused for their size; none after. (An oversized request that met an injected fault
        # first taught nothing and may be sent again: how many depends on timing.)
        assert srv.too_large_answers <= 2 * 4 and sizes.count(16) >= 600 // 16
        assert sorted(srv.billed_texts) == sorted(texts)  # each input paid for exactly once
        assert len(m._resume) == 0  # the successful call used up the kept rows


def test_a_413_limit_applies_to_the_retry_and_later_batches() -> None:
    """Issue 11 item 9a: the size learned from a 413 is used for the rest of the call:
    batches planned at 64 are cut to 16 before they are sent, not each rejected first."""
    texts = [f"t{i}" for i in range(256)]
    with FakeServer(dims=32, too_large=16) as srv:
        m = connect("openai", f"{srv.url}/v1#m", dimensions=32, max_batch_texts=64,
                    max_concurrency=1, **FAST)
        out = m.embed(texts)
        sizes = [len(b["input"]) for b in srv.requests]
    np.testing.assert_allclose(out, expected(texts, 32, 32), rtol=1e-5, atol=1e-6)
    assert sizes[:3] == [64, 32, 16] and set(sizes[3:]) == {16} and len(sizes) == 2 + 16


def test_resume_sends_only_what_failed() -> None:
    """Issue 11 item 9a: a poisoned batch fails; the rest is kept, and the next call (after
    the upstream heals) sends only that batch."""
    texts = [f"doc {i}" for i in range(30)]
    poisoned = {"on": True}
    with FakeServer(dims=32, reject=lambda b: poisoned["on"] and "doc 17" in b) as srv:
        m = dashscope(srv, dimensions=32, max_retries=1, max_concurrency=1)
        with pytest.raises(PartialEmbeddingError) as e:
            m.embed(texts)
        assert e.value.done == list(range(10)) and e.value.failed == list(range(10, 30))
        poisoned["on"] = False
        n = len(srv.requests)
        out = m.embed(texts)
        assert [b["input"] for b in srv.requests[n:]] == [texts[10:20], texts[20:30]]
    np.testing.assert_allclose(out, expected(texts, 32, 32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["/no/such/tokenizer.json", "/tmp"])
def test_a_tokenizer_variable_naming_nothing_is_refused(value: str, tokenizer_path: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``$SMYSL_TOKENIZER`` set to a path without a tokenizer used to fall back quietly to the
    Hub cache (or to byte bounds); it is an error naming the variable, when a provider or a
    remote reranker is built, before any request is sent."""
    from smysl.providers.rerankers import connect_reranker

    monkeypatch.setenv("SMYSL_TOKENIZER", value)
    with pytest.raises(FileNotFoundError, match=r"\$SMYSL_TOKENIZER=.*fix or unset"):
        tokens_module.find_tokenizer()
    with FakeServer(dims=32) as srv:
        with pytest.raises(FileNotFoundError, match=r"\$SMYSL_TOKENIZER"):
            connect("tei", srv.url, dimensions=32, **FAST)
        with pytest.raises(FileNotFoundError, match=r"\$SMYSL_TOKENIZER"):
            connect_reranker("tei", srv.url)
        assert srv.requests == []
        monkeypatch.setenv("SMYSL_TOKENIZER", str(tokenizer_path))  # a folder or file is fine
        m = connect("tei", srv.url, dimensions=32, **FAST)
        assert m.tokenizer is not None
        assert tokens_module.find_tokenizer() is m.tokenizer


def test_a_redirect_to_another_host_is_not_followed_with_the_texts() -> None:
    """A 307/308 replays the POST body where it points: within the upstream's origin (or from
    http to https on its host) it is followed; to another host the texts stay here, and the
    error says where it pointed (without the URL's password)."""
    seen: list[str] = []
    rows = {"data": [{"index": 0, "embedding": [0.5] * 32}], "usage": {"prompt_tokens": 2}}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.host == "elsewhere.example":
            return httpx.Response(200, json=rows)
        if request.url.path == "/v1/embeddings":
            return httpx.Response(308, headers={"Location": "/v2/embeddings"})
        if request.url.path == "/v2/embeddings" and request.url.scheme == "http":
            return httpx.Response(307, headers={"Location": "https://up.example/v2/embeddings"})
        return httpx.Response(307, headers={
            "Location": "https://user:pw@elsewhere.example/v1/embeddings"})

    p = connect("openai", "m", transport=httpx.MockTransport(handler), dimensions=32,
                base_url="http://up.example/v1", max_retries=0, **FAST)
    with pytest.raises(ProviderError) as e:
        p.embed(["fox"])
    assert "redirects to https://elsewhere.example/v1/embeddings" in str(e.value), str(e.value)
    assert "pw" not in str(e.value)
    assert seen == ["http://up.example/v1/embeddings", "http://up.example/v2/embeddings",
                    "https://up.example/v2/embeddings"]  # never elsewhere.example

    def within(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/embeddings":
            return httpx.Response(308, headers={"Location": "/v1/embeddings/"})
        return httpx.Response(200, json=rows)

    p = connect("openai", "m", transport=httpx.MockTransport(within), dimensions=32,
                base_url="https://up.example/v1", max_retries=0, **FAST)
    assert p.embed(["fox"]).shape == (1, 32)


def test_a_query_in_the_base_url_goes_with_every_request() -> None:
    """Azure-style ``?api-version=`` in the base URL: sent as the query of each request (it
    landed inside the path: ``/v1?api-version=1/embeddings``); a key in it stays out of
    errors."""
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(400, text=f"bad request {request.url}")

    p = connect("openai", "m", transport=httpx.MockTransport(handler), dimensions=32,
                base_url="https://up.example/openai/v1?api-version=2024-02-01&api_key=s3+cr/t%3D",
                max_retries=0, **FAST)
    with pytest.raises(ProviderError) as e:
        p.embed(["fox"])
    assert [(u.path, dict(u.params)) for u in seen] == [
        ("/openai/v1/embeddings", {"api-version": "2024-02-01", "api_key": "s3 cr/t="})]
    said = str(e.value)
    assert "api_key=***" in said and "HTTP 400" in said, said  # the URL as sent, echoed
    assert not any(form in said for form in ("s3+cr", "s3 cr", "cr%2F", "cr/t")), said
    # a smysl server's /v1 goes before the query, not into it
    p = connect("smysl", "m", transport=httpx.MockTransport(handler), dimensions=32,
                base_url="http://h:8000?token=abcd", max_retries=0, **FAST)
    with pytest.raises(ProviderError):
        p.embed(["fox"])
    assert (seen[-1].path, dict(seen[-1].params)) == ("/v1/embeddings", {"token": "abcd"})
