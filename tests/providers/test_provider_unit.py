"""Provider unit tests over httpx.MockTransport: model strings, request shapes, error policy."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from provider_fakes import det_vector

import smysl
from smysl.prompts import DEFAULT_TASK, format_query
from smysl.providers import (
    PRESETS,
    IncompleteEmbeddingError,
    Provider,
    ProviderHTTPError,
    RejectedInputError,
    connect,
    price_for,
)
from smysl.providers.retry import retry_after_seconds
from smysl.providers.tokens import width_from_name
from smysl.registry import split


class Recorder:
    """A MockTransport handler answering OpenAI-shaped requests, with scripted statuses."""

    def __init__(self, dims: int = 16, script: list[httpx.Response] | None = None) -> None:
        self.dims = dims
        self.script = list(script or [])
        self.bodies: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.script:
            return self.script.pop(0)
        texts = body["input"]
        dims = body.get("dimensions", self.dims)
        data = [{"object": "embedding", "index": i,
                 "embedding": det_vector(t, self.dims)[:dims].tolist()}
                for i, t in enumerate(texts)]
        return httpx.Response(200, json={"object": "list", "data": data, "model": body["model"],
                                         "usage": {"prompt_tokens": 3 * len(texts),
                                                   "total_tokens": 3 * len(texts)}})


def make(scheme: str, rest: str, handler: Recorder, **options: Any) -> Provider:
    sleeps: list[float] = []
    p = connect(scheme, rest, transport=httpx.MockTransport(handler), backoff_base=0.001,
                **options)
    p.sleep = sleeps.append
    p.sleeps = sleeps  # type: ignore[attr-defined]
    return p


# ----------------------------------------------------------------------------- model strings
def test_every_scheme_is_registered_and_dispatches() -> None:
    for scheme in PRESETS:
        assert split(f"{scheme}:some/model") == (scheme, "some/model")
    p = smysl.load("openrouter:qwen/qwen3-embedding-8b")
    assert isinstance(p, Provider)
    assert p.base_url == "https://openrouter.ai/api/v1" and p.model == "qwen/qwen3-embedding-8b"
    assert p.dimensions == 4096 and p.name == "openrouter:qwen/qwen3-embedding-8b"
    p.close()


@pytest.mark.parametrize(("model", "base", "name"), [
    ("openai:http://h:1/v1#Qwen/Qwen3-Embedding-0.6B", "http://h:1/v1",
     "Qwen/Qwen3-Embedding-0.6B"),
    ("smysl:http://h:8000#qwen3-embedding:0.6b", "http://h:8000/v1", "qwen3-embedding:0.6b"),
    ("ollama:qwen3-embedding:0.6b", "http://localhost:11434", "qwen3-embedding:0.6b"),
    ("tei:http://h:8080", "http://h:8080", "http://h:8080"),
    ("dashscope:text-embedding-v4", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
     "text-embedding-v4"),
])
def test_model_string_grammar(model: str, base: str, name: str) -> None:
    p = smysl.load(model)
    assert isinstance(p, Provider)
    assert (p.base_url, p.model) == (base, name)
    p.close()


def test_environment_base_urls_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    p = connect("ollama", "m")
    assert p.base_url == "http://0.0.0.0:11434"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gpu:9000/v1")
    q = connect("openai", "m", base_url="http://other:1/v1", timeout=3.0, max_retries=2)
    assert q.base_url == "http://other:1/v1"
    assert (q.config.timeout, q.config.max_retries) == (3.0, 2)
    with pytest.raises(TypeError, match="unexpected options"):
        connect("openai", "m", device="cuda")
    with pytest.raises(ValueError, match="no model"):
        connect("openrouter", "")
    with pytest.raises(ValueError, match="invalid provider setting"):
        connect("openai", "m", max_batch_texts=0)


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPINFRA_API_KEY")
    monkeypatch.delenv("DEEPINFRA_TOKEN")
    with pytest.raises(ValueError, match=r"DEEPINFRA_API_KEY or \$DEEPINFRA_TOKEN"):
        connect("deepinfra", "Qwen/Qwen3-Embedding-8B")
    monkeypatch.setenv("DEEPINFRA_TOKEN", "tok")  # the second documented name works too
    assert connect("deepinfra", "Qwen/Qwen3-Embedding-8B").dimensions == 4096


def test_width_from_name() -> None:
    assert width_from_name("Qwen/Qwen3-Embedding-0.6B") == 1024
    assert width_from_name("fireworks/qwen3-embedding-0p6b") == 1024
    assert width_from_name("qwen/qwen3-embedding-4b") == 2560
    assert width_from_name("Qwen/Qwen3-Embedding-8B-batch") == 4096
    assert width_from_name("text-embedding-3-small") is None


def test_price_table_lookup_and_override() -> None:
    assert price_for("dashscope", "text-embedding-v4") == 0.07
    assert price_for("deepinfra", "Qwen/Qwen3-Embedding-0.6B") == 0.002
    assert price_for("nobody", "x") is None
    h = Recorder()
    p = make("openrouter", "qwen/qwen3-embedding-8b", h, price_per_mtok=2.0, dimensions=16)
    p.embed(["a", "b"])
    assert p.usage.tokens == 6 and p.usage.cost == pytest.approx(6 * 2.0 / 1e6)


# ----------------------------------------------------------------------------- request shapes
def test_query_instruction_is_applied_client_side_exactly() -> None:
    h = Recorder()
    p = make("openrouter", "m", h, dimensions=16)
    p.embed_queries(["what is smysl?"])
    p.embed_documents(["a document"])
    assert h.bodies[0]["input"] == [format_query("what is smysl?", DEFAULT_TASK)]
    assert h.bodies[0]["input"][0] == f"Instruct: {DEFAULT_TASK}\nQuery:what is smysl?"
    assert h.bodies[1]["input"] == ["a document"]
    assert h.requests[0].headers["authorization"] == "Bearer sk-test"
    assert h.requests[0].url.path == "/api/v1/embeddings"


def test_dimensions_sent_where_supported_and_cut_locally() -> None:
    h = Recorder(dims=64)
    ds = make("dashscope", "text-embedding-v4", h, dimensions=64)
    full = ds.embed(["x", "y"])
    small = ds.embed(["x", "y"], dimensions=40)
    assert all(b["dimensions"] == 64 for b in h.bodies)
    ref = np.stack([det_vector(t, 64)[:40] for t in ["x", "y"]])
    np.testing.assert_allclose(small, ref / np.linalg.norm(ref, axis=1, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, rtol=1e-6)
    assert small.dtype == np.float32 and small.shape == (2, 40)
    # DashScope's documented default model width is its largest size, requested explicitly.
    h2 = Recorder(dims=2048)
    v4 = make("dashscope", "text-embedding-v4", h2)
    assert v4.dimensions == 2048
    v4.embed(["x"])
    assert h2.bodies[0]["dimensions"] == 2048
    h3 = Recorder(dims=16)
    make("deepinfra", "m", h3, dimensions=16).embed(["x"])
    assert "dimensions" not in h3.bodies[0]  # not documented for DeepInfra: cut locally


def test_unknown_width_is_probed_once() -> None:
    h = Recorder(dims=24)
    p = make("openai", "some-model", h)
    assert p.dimensions == 24 and p.dimensions == 24
    assert len(h.bodies) == 1
    assert p.embed(["a"]).shape == (1, 24)


@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_shuffled_indices_are_placed_by_index() -> None:
    texts = [f"t{i}" for i in range(7)]
    data = [{"object": "embedding", "index": i, "embedding": det_vector(t, 8).tolist()}
            for i, t in enumerate(texts)][::-1]
    h = Recorder(dims=8, script=[httpx.Response(200, json={"data": data})])
    p = make("openai", "m", h, dimensions=8)
    out = p.embed(texts)
    ref = np.stack([det_vector(t, 8) for t in texts])
    np.testing.assert_allclose(out, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-6)


# ----------------------------------------------------------------------------- error policy
@pytest.mark.parametrize(("status", "hint"), [(401, "OPENROUTER_API_KEY"), (403, "API key"),
                                              (404, "unknown model")])
def test_auth_and_unknown_model_fail_fast(status: int, hint: str) -> None:
    h = Recorder(script=[httpx.Response(status, json={"error": {"message": "nope"}})])
    p = make("openrouter", "m", h, dimensions=16)
    with pytest.raises(ProviderHTTPError, match=hint) as e:
        p.embed(["a", "b"])
    assert e.value.status == status and len(h.bodies) == 1  # no retry
    assert p.sleeps == []  # type: ignore[attr-defined]


@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_other_4xx_is_not_retried_and_names_inputs() -> None:
    h = Recorder(script=[httpx.Response(200, json={"data": [
        {"index": 0, "embedding": [1.0] * 16}, {"index": 1, "embedding": [1.0] * 16}]}),
        httpx.Response(400, json={"error": {"message": "bad input"}})])
    p = make("openai", "m", h, dimensions=16, max_batch_texts=2, max_concurrency=1)
    with pytest.raises(RejectedInputError, match="bad input") as e:
        p.embed(["a", "b", "c", "d", "e"])
    assert e.value.failed == [2, 3, 4] and e.value.total == 5
    assert isinstance(e.value, ValueError) and isinstance(e.value, IncompleteEmbeddingError)
    assert len(h.bodies) == 2  # the 400 was not retried, the last batch never sent


def test_retry_after_is_honoured_and_bounded() -> None:
    h = Recorder(script=[httpx.Response(429, headers={"Retry-After": "7"}),
                         httpx.Response(503, headers={"Retry-After": "5000"}),
                         httpx.Response(429, headers={"retry-after-ms": "250"})])
    p = make("openai", "m", h, dimensions=16, max_retry_after=60.0)
    p.embed(["a"])
    s = p.sleeps  # type: ignore[attr-defined]
    assert len(s) == 3 and p.usage.retries == 3 and p.usage.requests == 1
    assert s[0] >= 7 and s[1] == 60.0 and 0.25 <= s[2] < 1


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": "3"})) == 3
    assert retry_after_seconds(httpx.Headers({"Retry-After": "3", "retry-after-ms": "10"})) == 0.01
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"})) is None
    date = retry_after_seconds(httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert date == 0.0  # in the past: retry now
    assert retry_after_seconds(httpx.Headers({})) is None


def test_backoff_grows_exponentially_with_jitter() -> None:
    h = Recorder(script=[httpx.Response(500) for _ in range(5)])
    p = connect("openai", "m", transport=httpx.MockTransport(h), dimensions=16,
                backoff_base=1.0, backoff_max=8.0, max_retries=5, seed=1)
    sleeps: list[float] = []
    p.sleep = sleeps.append
    p.embed(["a"])
    caps = [1, 2, 4, 8, 8]
    assert all(c / 2 <= s <= c for s, c in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) == 5  # jittered


def test_retries_are_bounded() -> None:
    h = Recorder(script=[httpx.Response(500, text="boom") for _ in range(10)])
    p = make("openai", "m", h, dimensions=16, max_retries=3)
    with pytest.raises(IncompleteEmbeddingError, match="gave up after 4 attempts") as e:
        p.embed(["a", "b"])
    assert e.value.failed == [0, 1] and len(h.bodies) == 4
    assert p.usage.retries == 3 and p.usage.failed_requests == 1


@pytest.mark.parametrize("bad", [
    httpx.Response(200, text="{not json"),
    httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0] * 16}]}),  # one row short
    httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0] * 16},
                                       {"index": 1, "embedding": [1.0] * 15}]}),  # ragged
    httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0] * 16},
                                       {"index": 0, "embedding": [1.0] * 16}]}),  # twice index 0
    httpx.Response(200, text='{"data": [{"index": 0, "embedding": [NaN]}]}'),
    httpx.Response(200, json={"object": "error"}),
])
def test_malformed_bodies_are_retried(bad: httpx.Response) -> None:
    h = Recorder(script=[bad])
    p = make("openai", "m", h, dimensions=16)
    out = p.embed(["a", "b"])
    ref = np.stack([det_vector(t, 16) for t in ["a", "b"]])
    np.testing.assert_allclose(out, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-6)
    assert p.usage.retries == 1 and p.usage.tokens == 6  # only the good answer is billed


def test_payload_too_large_is_split() -> None:
    h = Recorder(script=[httpx.Response(413, text="too big")])
    p = make("openai", "m", h, dimensions=16)
    out = p.embed([f"t{i}" for i in range(5)])
    assert [len(b["input"]) for b in h.bodies] == [5, 3, 2]  # halved (rounded up)
    assert out.shape == (5, 16) and p.usage.requests == 2


def test_base64_rows_are_decoded() -> None:
    import base64

    rows = [det_vector(t, 16) for t in ["a", "b"]]
    data = [{"index": i, "embedding": base64.b64encode(r.astype("<f4").tobytes()).decode()}
            for i, r in enumerate(rows)]
    h = Recorder(script=[httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 2}})])
    out = make("smysl", "http://h:1#m", h, dimensions=16).embed(["a", "b"], truncate=True)
    ref = np.stack(rows)
    np.testing.assert_allclose(out, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-6)
    assert h.bodies[0]["truncate"] is True  # smysl's own extension
    assert h.requests[0].url.path == "/v1/embeddings"


def test_usage_line_is_readable() -> None:
    h = Recorder()
    p = make("dashscope", "text-embedding-v4", h, dimensions=16)
    p.embed([f"t{i}" for i in range(25)])
    line = str(p.usage)
    assert "\n" not in line
    assert line.startswith("dashscope:text-embedding-v4: 75 tokens (provider-reported), 25 texts,"
                           " 3 requests, 0 retries, $0.000005 at $0.07/1M tokens")
    assert p.usage.snapshot()["cost"] == pytest.approx(75 * 0.07 / 1e6)
    p.usage.reset()
    assert p.usage.tokens == 0 and p.usage.requests == 0
