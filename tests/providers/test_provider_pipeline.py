"""Switching between the local engine and a provider changes only the model string; ``smysl
serve`` fronts a provider; ``smysl embed --model provider:...`` prints a usage line."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_http import live_server
from provider_fakes import FakeServer, Fault, expected

import smysl
from smysl.base import BaseEmbedder

QUERIES = ["что такое смысл жизни?", "What is the capital of Russia?", "a quick fox"]
DOCS = [
    "Смысл жизни — в поиске смысла.",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors; similar texts land close together.",
]

#: Where each provider's API lives under its real host, mirrored on the fake server.
PATHS = {"openrouter": "/api/v1", "dashscope": "/compatible-mode/v1", "deepinfra": "/v1/openai",
         "fireworks": "/inference/v1", "siliconflow": "/v1", "openai": "/v1", "ollama": "",
         "tei": ""}


def pipeline(model: str) -> dict[str, np.ndarray]:
    """A small retrieval pipeline: everything but the model string is fixed."""
    m = smysl.load(model)
    try:
        q = m.embed_queries(QUERIES, task="qa")
        d = m.embed_documents(DOCS)
        q32 = m.embed_queries(QUERIES, dimensions=32)
        d32 = m.embed_documents(DOCS, dimensions=32)
        return {"scores": q @ d.T, "scores32": q32 @ d32.T, "docs": d,
                "ranking": np.argsort(-(q @ d.T), axis=1)}
    finally:
        m.close()


def tiny_upstream(tiny: BaseEmbedder) -> Any:
    lock = threading.Lock()  # one forward at a time on the shared CPU engine

    def embed(texts: list[str]) -> np.ndarray:
        with lock:
            return tiny._embed(texts, truncate=False)

    return embed


def test_switching_local_and_every_provider_changes_only_the_model_string(
        tiny: BaseEmbedder, tiny_dir: Path, tokenizer_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMYSL_TOKENIZER", str(tokenizer_path))  # for TEI's local token counts
    local = pipeline(str(tiny_dir))
    with FakeServer(dims=64, embed_fn=tiny_upstream(tiny), normalize=False) as srv:
        strings = [f"{s}:{srv.url}{p}#tiny" for s, p in PATHS.items() if s != "tei"]
        strings.append(f"tei:{srv.url}")
        for model in strings:
            remote = pipeline(model)
            for key in ("scores", "scores32", "docs"):
                np.testing.assert_allclose(remote[key], local[key], atol=2e-6, err_msg=model)
            np.testing.assert_array_equal(remote["ranking"], local["ranking"], err_msg=model)
        # The instruction reached every provider inside the text, exactly as the engine sees it.
        sent = {t for b in srv.requests for t in b.get("input", b.get("inputs", []))}
        assert tiny.format_texts(QUERIES[:1], "qa")[0] in sent
    # And a real ``smysl serve`` of the same model behind the ``smysl:`` scheme.
    with live_server(tiny, served_name="tiny") as url:
        remote = pipeline(f"smysl:{url}#tiny")
        # a review's: the string without "#tiny" said to write one, not which the server has
        with pytest.raises(ValueError, match=rf"no model given .*; {url}/v1 serves 'tiny'$"):
            smysl.load(f"smysl:{url}")
    with pytest.raises(ValueError, match=r"no model given \(write smysl:MODEL or "
                                         r"smysl:URL#MODEL\)$"):  # nobody there: the plain error
        smysl.load(f"smysl:{url}")
    for key in ("scores", "scores32", "docs"):
        np.testing.assert_allclose(remote[key], local[key], atol=2e-6)
    np.testing.assert_array_equal(remote["ranking"], local["ranking"])


def test_a_smysl_client_has_the_served_models_fingerprint(tiny: BaseEmbedder, tiny_dir: Path,
                                                          tmp_path: Path) -> None:
    """A review's: `smysl:` hashed its name, so an index built in process was refused through
    a server of the same weights ("other weights"), and servers of two numerics (float32,
    int8) shared one fingerprint and mixed their vectors in one index."""
    from smysl import Embedder
    from smysl.toolkit import Index, IndexConfig, StoreConfig

    kb = IndexConfig(StoreConfig(uri=str(tmp_path / "kb")))
    with Index.create_or_open(tiny, kb) as ix:
        ix.add_texts(["built in process"])
    with live_server(tiny, served_name="tiny") as url:
        for name in (f"smysl:{url}#tiny", f"smysl:{url}/v1#{tiny_dir}"):
            remote = smysl.load(name)
            assert remote.fingerprint() == tiny.fingerprint(), name
        with Index.create_or_open(remote, kb, create=False) as ix:
            ix.add_texts(["added through the server"])
            assert len(ix.search("server")[0]) == 2
    int8 = Embedder.load(str(tiny_dir), device="cpu", quantize="int8")
    with live_server(int8, served_name="tiny") as url:
        other = smysl.load(f"smysl:{url}#tiny")
        assert other.fingerprint() == int8.fingerprint() != tiny.fingerprint()
        with pytest.raises(ValueError, match=r"built with model .*fingerprint"):
            Index.create_or_open(other, kb, create=False)
    # a server without /info (another OpenAI-compatible one): the name's, as for other APIs
    with FakeServer(dims=64) as srv:
        plain = smysl.load(f"smysl:{srv.url}/v1#tiny")
        assert plain.fingerprint() == BaseEmbedder.fingerprint(plain)
        gone = srv.url
    # a server fronting a smysl: upstream that is down still answers /info (a diff review's:
    # 424 and a traceback), its fingerprint null
    import httpx

    down = smysl.load(f"smysl:{gone}#tiny", dimensions=64, max_retries=0)
    with live_server(down) as url:
        info = httpx.get(f"{url}/info", timeout=30)
        assert info.status_code == 200 and info.json()["fingerprint"] is None


def test_smysl_serve_fronts_a_provider(qwen_tok: Any, tokenizer_path: Path) -> None:
    import httpx

    from smysl.providers import connect

    with FakeServer(dims=64, tokenizer=qwen_tok, p429=0.2, seed=5) as upstream:
        provider = connect("openrouter", f"{upstream.url}/api/v1#qwen/qwen3-embedding-8b",
                           dimensions=64, tokenizer=tokenizer_path, backoff_base=0.001)
        with live_server(provider) as url:
            r = httpx.post(f"{url}/v1/embeddings", timeout=30, json={
                "model": "openrouter:qwen/qwen3-embedding-8b", "input": ["где смысл?", "x"],
                "instruction": "qa", "dimensions": 32})
            assert r.status_code == 200, r.text
            body = r.json()
            # Chained: a client of this server is itself just another model string.
            chained = smysl.load(f"smysl:{url}#openrouter:qwen/qwen3-embedding-8b")
            docs = chained.embed_documents(["x", "y"], dimensions=40)
            chained.close()
        formatted = [f"Instruct: Given a question, retrieve passages that answer the question"
                     f"\nQuery:{t}" for t in ["где смысл?", "x"]]
        got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, expected(formatted, 32, 64), atol=1e-6)
        np.testing.assert_allclose(docs, expected(["x", "y"], 40, 64), atol=1e-6)
        assert upstream.requests[0]["input"] == formatted
        assert provider.usage.tokens == upstream.billed_tokens
        assert provider.usage.retries == upstream.faults
        provider.close()


def test_cli_embed_prints_a_usage_line(qwen_tok: Any, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from smysl.cli import main

    lines = ["первая строка", "second line", "третья"]
    with FakeServer(dims=2048, tokenizer=qwen_tok) as srv:
        stdin = io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode()))
        monkeypatch.setattr("sys.stdin", stdin)
        model = f"dashscope:{srv.url}/compatible-mode/v1#text-embedding-v4"
        assert main(["embed", "--model", model, "--query", "--dimensions", "64",
                     "--no-progress"]) == 0
        billed = srv.billed_tokens
        assert srv.requests[0]["dimensions"] == 2048  # full width requested, cut locally
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["text"] for r in rows] == lines and all(len(r["embedding"]) == 64 for r in rows)
    cost = billed * 0.07 / 1e6
    assert (f"embedded 3 texts -> 64 dims; dashscope:text-embedding-v4: {billed:,} tokens "
            f"(provider-reported), 3 texts, 1 request, 0 retries, ${cost:.6f} at "
            "$0.07/1M tokens") in err


def test_cli_embed_says_what_a_failure_part_way_spent_and_kept(
        qwen_tok: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: a paid API refusing one line of three, one line a request, failed the
    command without a word of the two rows it had billed, and advised "embed the same texts
    again to send only the missing ones", which a command's next run cannot do."""
    from smysl.cli import main

    lines = ["ok", "bad one", "ok2"]
    with FakeServer(dims=64, tokenizer=qwen_tok) as srv:
        # the width probe and two lines answered, the third line refused (whichever it is)
        refused = json.dumps({"error": {"message": "bad input", "type": "invalid_request"}})
        srv.script.extend([Fault(), Fault(), Fault(), Fault(400, {}, refused)])
        stdin = io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode()))
        monkeypatch.setattr("sys.stdin", stdin)
        model = f"openai:{srv.url}/v1#m"
        code = main(["embed", "--model", model, "--max-batch-size", "1", "--no-progress"])
        billed = [t for t in srv.billed_texts if t in lines]
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(billed) == 2, err  # a refused input: code 2
    assert "spent before the error: " in err and "3 texts, 3 requests" in err, err
    assert "embed the same texts again" not in err
    assert "the 2 lines embedded before it are not kept between runs; a corpus job" in err


def test_a_served_provider_tells_clients_no_advice_for_its_own_failures() -> None:
    """Errors the provider raises itself (rows of the wrong width, here) had no words for a
    server's clients: they got the whole message, "1 of 1 inputs were not embedded (first
    failed input: #0): ... pass dimensions=64 if that is the model's width"."""
    from fastapi.testclient import TestClient

    from smysl.providers import connect
    from smysl.server import ServerConfig, create_app

    with FakeServer(dims=64, api_key="k") as upstream:
        provider = connect("openai", f"{upstream.url}/v1#text-embedding-3-small",
                           dimensions=100, api_key="k", max_retries=0, timeout=0.5)
        with TestClient(create_app(provider, ServerConfig())) as c:
            r = c.post("/v1/embeddings", json={"input": ["a"]})
        provider.close()
    assert r.status_code == 502, r.text
    message = r.json()["error"]["message"]
    assert message.endswith("failed: 64-wide rows where 100 were expected"), message
    assert "dimensions=" not in message and "input" not in message


def test_a_served_provider_passes_on_what_failed_upstream(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """An upstream's 429, 401 or 503 reached the server's clients as a 500 "internal error:
    IncompleteEmbeddingError" (TEI: 424) with a traceback in the log: now its rate limit is a
    429 with its Retry-After, unavailable a 503, a timeout a 504, the rest a 502, in each API's
    shape, with the provider's (redacted) words: the upstream's status and answer, not the
    advice meant for whoever runs the provider."""
    from fastapi.testclient import TestClient

    from smysl.providers import connect
    from smysl.server import ServerConfig, create_app, errors

    with FakeServer(dims=32, api_key="sk-upstream-key") as upstream:
        provider = connect("openrouter", f"{upstream.url}/api/v1#qwen/qwen3-embedding-8b",
                           dimensions=32, api_key="sk-upstream-key", max_retries=0,
                           timeout=0.5)
        cases = [(Fault(429, {"Retry-After": "7"}), 429, "7"),
                 (Fault(503), 503, None),
                 (Fault(401, body='{"error": "bad key sk-upstream-key"}'), 502, None),
                 (Fault(500), 502, None),
                 (Fault(404), 502, None),
                 (Fault(delay=2.0), 504, None)]
        errors._logged.clear()
        monkeypatch.setattr(errors, "UPSTREAM_LOG_S", 3600.0)  # a slow runner: still one line
        with TestClient(create_app(provider, ServerConfig())) as c:
            for path, body in (("/v1/embeddings", {"input": ["a"]}),
                               ("/api/embed", {"model": "qwen3-embedding-8b", "input": ["a"]}),
                               ("/embed", {"inputs": ["a"]})):
                for fault, status, wait in cases:
                    upstream.script.append(fault)
                    with caplog.at_level("WARNING", logger="smysl.server"):
                        r = c.post(path, json=body)
                    assert r.status_code == status, (path, fault, r.text)
                    assert r.headers.get("retry-after") == wait
                    assert "the upstream of" in r.text and "internal error" not in r.text
                    assert "sk-upstream-key" not in r.text
                    # the operator's advice (the key's variable, the upstream's URL on a
                    # 404) and the Python caller's (timeout=SECONDS) stay in the log
                    for advice in ("OPENROUTER_API_KEY", upstream.url, "SECONDS", "input"):
                        assert advice not in r.text, (advice, r.text)
            assert "unhandled error" not in caplog.text
            # one line per status within UPSTREAM_LOG_S, not one per request
            lines = [r for r in caplog.records if "upstream failed" in r.getMessage()]
            assert len(lines) == 4  # 429, 503, 502 (twice: one line), 504
            assert c.post("/embed", json={"inputs": ["a"]}).status_code == 200
        provider.close()
