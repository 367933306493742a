"""Providers against a real loopback HTTP server: every documented shape, injected faults
(429 with Retry-After, 500, dropped connections, slow answers, malformed bodies), limits,
truncation, concurrency, and the 1,000-text fault-injection bar."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from provider_fakes import FakeServer, Fault, det_vector, expected

import smysl
from smysl.providers import IncompleteEmbeddingError, Provider, connect
from smysl.tokenize import InputTooLongError

FAST = {"backoff_base": 0.001, "backoff_max": 0.01}

#: (scheme, path under the server root, model) for one provider of each request shape.
SHAPES = {
    "dashscope": ("dashscope", "/compatible-mode/v1", "text-embedding-v4"),
    "ollama": ("ollama", "", "qwen3-embedding:0.6b"),
    "tei": ("tei", "", ""),
}


def texts_for(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["смысл", "жизни", "vector", "embedding", "Москва", "river", "код", "query", "ёж",
             "the", "42", "поиск", "retrieval", "模型", "🙂"]
    return [f"{i}: " + " ".join(rng.choice(words, size=int(rng.integers(1, 40))))
            for i in range(n)]


def load(srv: FakeServer, shape: str, **options: Any) -> Provider:
    scheme, path, model = SHAPES[shape]
    return connect(scheme, f"{srv.url}{path}#{model}", **FAST, **options)


# ----------------------------------------------------------------------------- the bar
@pytest.mark.parametrize("shape", list(SHAPES))
def test_thousand_texts_with_faults_land_in_place(shape: str, qwen_tok: Any,
                                                  tokenizer_path: Path) -> None:
    """20% injected 429/500 and random delays: every vector in its place, retries bounded,
    cost equal to what the fake server billed."""
    texts = texts_for(1000)
    with FakeServer(dims=128, tokenizer=qwen_tok, p429=0.1, p500=0.1, max_delay=0.01,
                    max_inputs=10, seed=7) as srv:
        width = 64 if shape == "dashscope" else 128  # DashScope cuts server-side
        m = load(srv, shape, dimensions=width, tokenizer=tokenizer_path, max_retries=8,
                 price_per_mtok=0.07, max_concurrency=4, max_batch_texts=10)
        t0 = time.perf_counter()
        out = m.embed(texts)
        elapsed = time.perf_counter() - t0
        np.testing.assert_allclose(out, expected(texts, width, 128), rtol=1e-5, atol=1e-6)
        u = m.usage
        batches = -(-1000 // m.config.max_batch_texts)
        assert u.texts == 1000 and u.requests == srv.ok_requests == batches
        assert srv.faults > 0 and u.retries == srv.faults  # one retry per injected fault
        assert u.retries <= batches * m.config.max_retries and u.failed_requests == 0
        assert u.tokens == srv.billed_tokens
        assert u.cost == pytest.approx(srv.billed_tokens * 0.07 / 1e6, rel=1e-12)
        if shape == "tei":  # no usage in TEI responses: counted locally, same tokenizer
            assert u.counted_tokens == srv.billed_tokens and u.reported_tokens == 0
        else:
            assert u.reported_tokens == srv.billed_tokens
        assert elapsed < 30
        m.close()


# ----------------------------------------------------------------------------- faults
def test_slow_response_times_out_and_is_retried() -> None:
    with FakeServer(dims=32) as srv:
        srv.script.append(Fault(delay=1.5))
        m = load(srv, "dashscope", dimensions=32, timeout=0.3)
        t0 = time.perf_counter()
        out = m.embed(["a", "b"])
        assert time.perf_counter() - t0 < 1.4  # did not wait for the slow answer
        np.testing.assert_allclose(out, expected(["a", "b"], 32, 32), rtol=1e-5)
        assert m.usage.retries == 1 and m.usage.requests == 1


def test_dropped_connection_and_html_error_page_are_retried() -> None:
    with FakeServer(dims=32) as srv:
        srv.script.extend([Fault(drop=True), Fault(body="<html>502 Bad Gateway</html>"),
                           Fault(mutate=lambda b: {**b, "data": b["data"][:-1]})])
        m = load(srv, "dashscope", dimensions=32, max_concurrency=1)
        out = m.embed(["x", "y", "z"])
        np.testing.assert_allclose(out, expected(["x", "y", "z"], 32, 32), rtol=1e-5)
        assert m.usage.retries == 3 == srv.faults


def test_wrong_width_fails_fast_with_a_hint() -> None:
    with FakeServer(dims=32) as srv:
        m = load(srv, "dashscope", dimensions=64)  # a server that ignores ``dimensions``
        with pytest.raises(IncompleteEmbeddingError, match="pass dimensions=32"):
            m.embed(["a"])
        assert len(srv.requests) == 1


def test_connection_refused_is_retried_then_reported() -> None:
    with FakeServer() as srv:
        url = srv.url
    m = smysl.load(f"openai:{url}/v1#m", dimensions=32, max_retries=2, **FAST)
    with pytest.raises(IncompleteEmbeddingError, match="connection error") as e:
        m.embed(["a"])
    # a server that listens only once its model is loaded (vLLM, TEI, smysl serve): a client
    # started beside it waits out every retry
    assert e.value.failed == [0] and m.usage.retries == 2
    assert "nothing listens" not in str(e.value)
    # Ollama listens at once: a port of this machine that refused twice before any answer is
    # no Ollama running, and the rest of max_retries is not waited out (a review's: 25 s)
    m = smysl.load(f"ollama:{url}#m", dimensions=32, max_retries=4, **FAST)
    with pytest.raises(IncompleteEmbeddingError, match="connection error") as e:
        m.embed(["a"])
    assert m.usage.retries == 1
    assert f"nothing listens at {url}: refused 2 times, not tried again" in str(e.value)
    assert "ollama serve" in str(e.value)
    # once it has answered, a refusal is a restart: every retry is spent
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_once_then_go() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        listener.close()

    server = threading.Thread(target=answer_once_then_go, daemon=True)
    server.start()
    m = smysl.load(f"ollama:http://127.0.0.1:{port}#m", dimensions=32, max_retries=3, **FAST)
    with pytest.raises(IncompleteEmbeddingError, match="connection error") as e:
        m.embed(["b"])
    server.join(5)
    assert m.usage.retries == 3 and "nothing listens" not in str(e.value)


def test_poisoned_batch_fails_loudly_never_silently() -> None:
    texts = texts_for(60)
    texts[37] = "POISON"
    with FakeServer(dims=32, reject=lambda batch: "POISON" in batch) as srv:
        m = load(srv, "dashscope", dimensions=32, max_retries=2)
        with pytest.raises(IncompleteEmbeddingError) as e:
            m.embed(texts)
    err = e.value
    assert set(range(30, 40)) <= set(err.failed) and err.failed == sorted(set(err.failed))
    assert 37 in err.failed and err.total == 60 and "inputs were not embedded" in str(err)


def test_truncation_a_provider_could_not_apply_is_said(tokenizer_path: Path) -> None:
    """A review's: `openai:` with truncate=True and an over-long input got the server's 400
    "send truncate: true", though the caller had: the flag reaches no OpenAI API, and without
    a tokenizer nothing cuts here. The refusal now says why truncation did not happen."""
    long = "long " * 50
    with FakeServer(dims=32, refuse=lambda text: text == long) as srv:
        m = smysl.load(f"openai:{srv.url}/v1#m", dimensions=32, **FAST)
        with pytest.raises(IncompleteEmbeddingError) as e:
            m.embed(["short", long], truncate=True)
        # both that it lacks, at once (a diff review's: one at a time)
        assert "truncate=True could not be applied: this API takes no truncate flag, the " \
               "model's token limit is not known here (pass max_tokens=N) and no Qwen3 " \
               "tokenizer is at hand" in str(e.value)
        with pytest.raises(IncompleteEmbeddingError) as e:  # not asked: nothing to explain
            m.embed(["short", long])
        assert "could not be applied" not in str(e.value)
        # a tokenizer without the model's limit: that is what is missing
        m = smysl.load(f"openai:{srv.url}/v1#m", dimensions=32, tokenizer=tokenizer_path,
                       **FAST)
        with pytest.raises(IncompleteEmbeddingError, match=r"token limit is not known here "
                                                           r"\(pass max_tokens=N\);") as e:
            m.embed(["short", long], truncate=True)
        assert "tokenizer is at hand" not in str(e.value)
        # with both, the input is cut here and embedded
        m = smysl.load(f"openai:{srv.url}/v1#m", dimensions=32, tokenizer=tokenizer_path,
                       max_tokens=8, **FAST)
        assert m.embed(["short", long], truncate=True).shape == (2, 32)


def test_dashscope_ten_row_limit_is_respected() -> None:
    texts = texts_for(25)
    with FakeServer(dims=32, max_inputs=10) as srv:
        m = load(srv, "dashscope", dimensions=32)
        m.embed(texts)
        assert sorted(len(b["input"]) for b in srv.requests) == [5, 10, 10]
        # The limit is real: a client that ignores it gets DashScope's 400, not retried; its
        # halves pass (a refused batch is halved to find the input refused)
        want, before = m.embed(texts), len(srv.requests)
        over = load(srv, "dashscope", dimensions=32, max_batch_texts=20)
        np.testing.assert_array_equal(over.embed(texts), want)
        assert sorted(len(b["input"]) for b in srv.requests[before:]) == [5, 10, 10, 20]


def test_tei_413_is_split_to_the_servers_limit(tokenizer_path: Path) -> None:
    texts = texts_for(20)
    with FakeServer(dims=32, tei_max_batch=8) as srv:
        m = load(srv, "tei", max_batch_texts=20, tokenizer=tokenizer_path)
        out = m.embed(texts)
        np.testing.assert_allclose(out, expected(texts, 32, 32), rtol=1e-5)
        # The width is probed once (TEI does not say it), then 413s halve the batches.
        # A batch planned before the limit was learned is cut to it before it is sent.
        assert [len(b["inputs"]) for b in srv.requests] == [1, 20, 10, 5, 5, 5, 5]
        n = len(srv.requests)
        np.testing.assert_allclose(m.embed(texts), out)
        assert [len(b["inputs"]) for b in srv.requests[n:]] == [5, 5, 5, 5]  # learned the limit
        assert m.usage.requests == 9 and m.usage.texts == 41


def test_unknown_model_and_bad_key_over_http() -> None:
    with FakeServer(dims=32, models={"qwen3-embedding:0.6b"}) as srv:
        bad = smysl.load(f"ollama:{srv.url}#nope", dimensions=32, **FAST)
        with pytest.raises(Exception, match="unknown model 'nope'"):
            bad.embed(["a"])
        assert len(srv.requests) == 1
    with FakeServer(dims=32, api_key="right") as srv:
        m = smysl.load(f"openrouter:{srv.url}/api/v1#m", dimensions=32, api_key="wrong")
        with pytest.raises(Exception, match="OPENROUTER_API_KEY"):
            m.embed(["a"])
        ok = smysl.load(f"openrouter:{srv.url}/api/v1#m", dimensions=32, api_key="right")
        assert ok.embed(["a"]).shape == (1, 32)


def test_a_key_with_a_line_break_works_or_is_refused_unshown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A key read from a .env or secret file kept its line break: httpx refused the header
    and smysl's error quoted the whole key (retried, too). Around it: stripped; inside: refused
    before any request, without the key."""
    with FakeServer(dims=32, api_key="sk-right-key") as srv:
        for around in ("sk-right-key\n", " sk-right-key ", "\tsk-right-key\r\n"):
            monkeypatch.setenv("OPENROUTER_API_KEY", around)
            m = smysl.load(f"openrouter:{srv.url}/api/v1#m", dimensions=32)
            assert m.embed(["a"]).shape == (1, 32)
        sent = len(srv.requests)
        for inside in ("sk-right\nkey", "sk-right key", "sk-\x07right"):
            monkeypatch.setenv("OPENROUTER_API_KEY", inside)
            with pytest.raises(ValueError, match=r"the API key from \$OPENROUTER_API_KEY has a "
                               r"space, line break or control character") as e:
                smysl.load(f"openrouter:{srv.url}/api/v1#m", dimensions=32)
            assert "right" not in str(e.value)
        monkeypatch.setenv("OPENROUTER_API_KEY", "  ")
        with pytest.raises(ValueError, match="no API key"):
            smysl.load(f"openrouter:{srv.url}/api/v1#m", dimensions=32)
        with pytest.raises(ValueError, match="from api_key= has a space"):
            smysl.load(f"openrouter:{srv.url}/api/v1#m", dimensions=32, api_key="a b")
        assert len(srv.requests) == sent
        # a header's value: stripped too; a line break inside refused at load, unshown (h11's
        # error quoted it escaped, past redaction)
        m = smysl.load(f"openai:{srv.url}/v1#m", dimensions=32, api_key="sk-right-key",
                       headers={"X-Token": "secret-value\n"})
        assert m.embed(["a"]).shape == (1, 32) and srv.headers_seen[-1]["X-Token"] == \
            "secret-value"
        with pytest.raises(ValueError, match="the value of header 'X-Api-Key' has a line "
                           "break or control character inside it") as e:
            smysl.load(f"openai:{srv.url}/v1#m", dimensions=32, api_key="sk-right-key",
                       headers={"X-Api-Key": "sk-abcd\nefgh"})
        assert "abcd" not in str(e.value)
        # a port past 65535, for a reranker too (its URL is built elsewhere)
        with pytest.raises(ValueError, match="bad URL"):
            smysl.load_reranker("tei:http://127.0.0.1:70000")


# ----------------------------------------------------------------------------- semantics
def test_truncation_local_check_and_client_side_cut(qwen_tok: Any, tokenizer_path: Path) -> None:
    long = "смысл жизни в поиске смысла " * 20
    with FakeServer(dims=32, tokenizer=qwen_tok) as srv:
        m = load(srv, "dashscope", dimensions=32, tokenizer=tokenizer_path, max_tokens=16)
        with pytest.raises(InputTooLongError, match="at most 16"):
            m.embed(["short", long])
        assert srv.requests == []  # refused before spending anything
        out = m.embed(["short", long], truncate=True)
        sent = srv.requests[0]["input"]
        assert sent[0] == "short" and long.startswith(sent[1])
        assert qwen_tok.count([sent[1]])[0] <= 16
        np.testing.assert_allclose(out, expected(sent, 32, 32), rtol=1e-5)
        # Cuts that split a multi-byte character still fit and leave no U+FFFD behind.
        for limit in range(3, 12):
            cut = connect("dashscope", f"{srv.url}/compatible-mode/v1#text-embedding-v4",
                          dimensions=32, tokenizer=tokenizer_path, max_tokens=limit)
            cut.embed(["🙂模型ёж " * 10], truncate=True)
            text = srv.requests[-1]["input"][0]
            assert qwen_tok.count([text])[0] <= limit and "\ufffd" not in text
        # Servers that truncate themselves get the flag instead.
        o = load(srv, "ollama", max_tokens=16, dimensions=32)
        o.embed(["a"], truncate=True)
        o.embed(["a"])
        assert [b["truncate"] for b in srv.requests[-2:]] == [True, False]


def test_no_tokenizer_falls_back_to_a_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("smysl.providers.tokens.TOKENIZER_REPO", "smysl-tests/no-such-repo")
    with FakeServer(dims=32) as srv:
        m = load(srv, "tei", dimensions=32)
        with pytest.warns(RuntimeWarning, match="no Qwen3 tokenizer"):
            m.embed(["abc", "ёж"])
        assert m.usage.estimated_tokens == (3 + 1) + (4 + 1) == m.usage.tokens
        assert str(m.usage).startswith(f"tei:{srv.url}: ≤9 tokens (counted locally), 2 texts")
        with pytest.raises(NotImplementedError):
            m.count_tokens(["a"])


def test_one_provider_many_threads(qwen_tok: Any) -> None:
    with FakeServer(dims=32, tokenizer=qwen_tok, p429=0.1, p500=0.1, max_delay=0.005,
                    seed=3) as srv:
        m = load(srv, "dashscope", dimensions=32, max_retries=8)
        results: dict[int, np.ndarray] = {}
        chunks = {k: texts_for(40, seed=k) for k in range(6)}

        def work(k: int) -> None:
            results[k] = m.embed(chunks[k], dimensions=32 if k % 2 else None)

        threads = [threading.Thread(target=work, args=(k,)) for k in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k, texts in chunks.items():
            np.testing.assert_allclose(results[k], expected(texts, 32, 32), rtol=1e-5)
        assert m.usage.texts == 240 and m.usage.tokens == srv.billed_tokens
        assert m.usage.retries == srv.faults


def test_threads_sharing_a_provider_reuse_its_connections(qwen_tok: Any) -> None:
    """Six threads on one provider keep their connections open between requests. httpcore
    closes a pool's surplus idle connections, and a connection another thread has just been
    handed counts as idle: it was closed under that thread's request after the server had
    answered (and billed) it, and the request went out again (``Bad file descriptor``)."""
    with FakeServer(dims=32, tokenizer=qwen_tok, max_delay=0.002) as srv:
        m = load(srv, "dashscope", dimensions=32)
        chunks = {k: texts_for(60, seed=k) for k in range(6)}
        threads = [threading.Thread(target=m.embed, args=(chunks[k],)) for k in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert m.usage.texts == 360 and m.usage.retries == 0
        assert m.usage.tokens == srv.billed_tokens
        # At most the pool's size, opened once each: 8 for max_concurrency=4.
        assert srv.connections <= 8


def test_progress_counts_every_text() -> None:
    class Bar:
        n = 0

        def update(self, k: int = 1) -> None:
            self.n += k

    with FakeServer(dims=32) as srv:
        bar = Bar()
        load(srv, "dashscope", dimensions=32).embed(texts_for(33), progress=bar)
        assert bar.n == 33


def test_matryoshka_and_query_semantics_over_http() -> None:
    with FakeServer(dims=64) as srv:
        m = load(srv, "ollama", dimensions=64)
        q = m.embed_queries(["что такое смысл?"], task="qa", dimensions=32)
        sent = srv.requests[-1]["input"][0]
        assert sent == ("Instruct: Given a question, retrieve passages that answer the question"
                        "\nQuery:что такое смысл?")
        ref = det_vector(sent, 64)[:32]
        np.testing.assert_allclose(q[0], ref / np.linalg.norm(ref), rtol=1e-5)
        assert q.dtype == np.float32 and m.embed([]).shape == (0, 64)
