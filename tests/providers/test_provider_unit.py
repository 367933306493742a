"""Provider unit tests over httpx.MockTransport: model strings, request shapes, error policy."""

from __future__ import annotations

import base64
import json
import time
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

    def __init__(self, dims: int = 16, script: list[httpx.Response] | None = None, *,
                 honour_dimensions: bool = True) -> None:
        self.dims = dims
        self.honour_dimensions = honour_dimensions
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
        dims = body.get("dimensions", self.dims) if self.honour_dimensions else self.dims
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


@pytest.mark.parametrize(("host", "base"), [
    ("0.0.0.0", "http://0.0.0.0:11434"),
    ("gpu-box:1234", "http://gpu-box:1234"),
    ("[::1]", "http://[::1]:11434"),
    ("gpu-box/ollama", "http://gpu-box:11434/ollama"),
    # a scheme written: its own port, as Ollama reads OLLAMA_HOST (these became
    # https://ollama.example.com:11434 and http://gpu-box/ollama:11434)
    ("https://ollama.example.com", "https://ollama.example.com"),
    ("http://gpu-box/ollama", "http://gpu-box/ollama"),
    ("http://gpu-box:11434/", "http://gpu-box:11434"),
])
def test_ollama_hosts_are_read_as_ollama_reads_them(host: str, base: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", host)
    assert connect("ollama", "m").base_url == base
    monkeypatch.delenv("OLLAMA_HOST")
    if "://" in host:
        assert connect("ollama", f"{host}#m").base_url == base
    with pytest.raises(ValueError, match="bad URL 'http://h:99999'"):
        connect("ollama", "m", base_url="h:99999")
    # every scheme (openai: was retried as "connection refused")
    with pytest.raises(ValueError, match="bad URL 'https://h:99999/v1'"):
        connect("openai", "https://h:99999/v1#m")


def test_environment_base_urls_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    p = connect("ollama", "m")
    assert p.base_url == "http://0.0.0.0:11434"
    # a provider class built on its preset reads the variable as connect() does (its base
    # URL was the bare "0.0.0.0"); a rerank class likewise (SMYSL_URL was ignored)
    from smysl.providers.ollama import OllamaProvider
    from smysl.providers.presets import PRESETS
    from smysl.providers.rerankers import RERANK_PRESETS, SmyslReranker

    assert OllamaProvider("m", PRESETS["ollama"]).base_url == "http://0.0.0.0:11434"
    monkeypatch.setenv("SMYSL_URL", "localhost:9000")
    assert SmyslReranker("m", RERANK_PRESETS["smysl"]).base_url == "http://localhost:9000/v1"
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
    assert price_for("deepinfra", "Qwen/Qwen3-Embedding-8B") == 0.05  # the family's
    assert price_for("openrouter", "qwen/qwen3-embedding-4b") == 0.02
    # another model at the same provider, or OpenAI's own API: not $0 and not another
    # model's price (OpenRouter's 8B price was used for any model, OpenAI's API cost $0)
    assert price_for("openrouter", "openai/text-embedding-3-large") is None
    assert price_for("deepinfra", "BAAI/bge-m3") is None
    assert price_for("openai", "text-embedding-3-large", "https://api.openai.com/v1") == 0.13
    assert price_for("openai", "my-model", "https://api.openai.com/v1") is None
    assert price_for("openai", "text-embedding-3-large", "http://gpu:9000/v1") == 0.0
    assert smysl.load("openai:text-embedding-3-small").usage.price_per_mtok == 0.02
    h = Recorder(dims=32)
    p = make("openrouter", "qwen/qwen3-embedding-8b", h, price_per_mtok=2.0, dimensions=32)
    p.embed(["a", "b"])
    assert p.usage.tokens == 6 and p.usage.cost == pytest.approx(6 * 2.0 / 1e6)


def test_dimensions_out_of_a_named_qwen3_range_are_refused_at_load() -> None:
    """``dimensions=5000`` for an 8B by name was sent, billed, then refused for the rows'
    width; 16 was sent and returned. A model whose width the name does not give is asked."""
    h = Recorder()
    for bad in (5000, 16):
        with pytest.raises(ValueError, match=f"must be in 32..4096 for this model, got {bad}"):
            make("openrouter", "qwen/qwen3-embedding-8b", h, dimensions=bad)
    assert h.requests == []
    assert make("openrouter", "m", h, dimensions=16).request_dimensions == 16


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
    # DeepInfra documents ``dimensions`` (docs.deepinfra.com/api-reference/openai-embeddings-1).
    h3 = Recorder(dims=4096)
    di = make("deepinfra", "Qwen/Qwen3-Embedding-8B", h3, dimensions=1024)
    assert di.embed(["x"]).shape == (1, 1024) and h3.bodies[0]["dimensions"] == 1024


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("scheme", ["openrouter", "deepinfra", "openai"])
def test_wider_rows_than_asked_are_cut_like_server_side_dimensions(scheme: str) -> None:
    """A server that ignores ``dimensions`` (an OpenRouter upstream, vLLM) answers the model's
    full width: its Matryoshka prefix is what was asked for, cut and normalised as a
    server-side ``dimensions`` would, not an error on every call."""
    texts = ["x", "y"]
    h = Recorder(dims=64, honour_dimensions=False)
    p = make(scheme, "qwen/qwen3-embedding-8b", h, dimensions=40)
    out = p.embed(texts)
    assert out.shape == (2, 40) and p.usage.retries == 0 and len(h.bodies) == 1
    want = _unit(np.stack([det_vector(t, 64)[:40] for t in texts]))
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(p.embed(texts, dimensions=32), _unit(want[:, :32]), rtol=1e-6)


def test_a_width_between_an_api_s_steps_is_asked_as_the_next_one_up() -> None:
    """DashScope's text-embedding-v4 and SiliconFlow's Qwen3 models take only listed widths
    (64, 128, 256, 512, 768, 1024, ...): 300 passed the range check and got a 400 charged to
    every input. The next step up is asked for and its rows cut here (the same prefix)."""
    texts = ["x", "y"]
    for scheme, model in (("dashscope", "text-embedding-v4"),
                          ("siliconflow", "Qwen/Qwen3-Embedding-8B")):
        h = Recorder(dims=4096)
        p = make(scheme, model, h, dimensions=300)
        out = p.embed(texts)
        assert [b["dimensions"] for b in h.bodies] == [512] and out.shape == (2, 300)
        np.testing.assert_allclose(out, _unit(np.stack([det_vector(t, 4096)[:300]
                                                        for t in texts])), rtol=1e-6)
        h2 = Recorder(dims=4096)
        make(scheme, model, h2, dimensions=256).embed(texts)
        assert h2.bodies[0]["dimensions"] == 256  # a step: sent as it is
    # a model's width bounds the steps, and the width given: DashScope's v4 is 2048 wide
    with pytest.raises(ValueError, match=r"dimensions must be in 32..2048"):
        make("dashscope", "text-embedding-v4", Recorder(dims=2048), dimensions=3000)
    h4 = Recorder(dims=2048)
    make("dashscope", "text-embedding-v4", h4, dimensions=1600).embed(texts)
    assert h4.bodies[0]["dimensions"] == 2048
    h3 = Recorder(dims=4096)  # an API without steps gets the width asked
    make("deepinfra", "Qwen/Qwen3-Embedding-8B", h3, dimensions=300).embed(texts)
    assert h3.bodies[0]["dimensions"] == 300
    # a review's: DashScope's text-embedding-v3 takes 1024, 768 and 512 only in Singapore
    # (the preset's region): 256 was sent and refused; 512 is asked and cut here
    h5 = Recorder(dims=1024)
    out = make("dashscope", "text-embedding-v3", h5, dimensions=256).embed(texts)
    assert h5.bodies[0]["dimensions"] == 512 and out.shape == (2, 256)
    np.testing.assert_allclose(out, _unit(np.stack([det_vector(t, 1024)[:256]
                                                    for t in texts])), rtol=1e-6)
    h6 = Recorder(dims=1024)
    make("dashscope", "text-embedding-v3", h6, dimensions=768).embed(texts)
    assert h6.bodies[0]["dimensions"] == 768


def test_a_server_that_refuses_dimensions_gets_full_rows_cut_here(caplog) -> None:  # type: ignore[no-untyped-def]
    """vLLM serves Qwen3-Embedding without Matryoshka unless told so, and answers any
    `dimensions` with a 400: every call failed as "3 of 3 inputs were not embedded", blaming
    the inputs. Now full rows are asked for (once, then always) and cut here."""
    refusal = {"error": {"message": 'Model "Qwen/Qwen3-Embedding-0.6B" does not support '
                         "matryoshka representation, changing output dimensions will lead to "
                         "poor results.", "type": "BadRequestError", "code": 400}}
    h = Recorder(dims=64, script=[httpx.Response(400, json=refusal)])
    p = make("openai", "http://vllm:8000/v1#Qwen/Qwen3-Embedding-0.6B", h, dimensions=40)
    texts = ["x", "y", "z"]
    with caplog.at_level("WARNING", logger="smysl.providers"):
        out = p.embed(texts)
    assert "is_matryoshka" in caplog.text
    assert ["dimensions" in b for b in h.bodies] == [True, False]
    np.testing.assert_allclose(out, _unit(np.stack([det_vector(t, 64)[:40] for t in texts])),
                               rtol=1e-6)
    p.embed(["w"])
    assert "dimensions" not in h.bodies[-1]
    # another model's refusal stands: its cut rows would be poor vectors (vLLM says so)
    bge = Recorder(dims=64, script=[httpx.Response(400, json=refusal)])
    with pytest.raises(RejectedInputError, match="does not support matryoshka"):
        make("openai", "http://vllm:8000/v1#BAAI/bge-m3", bge, dimensions=40).embed(["x"])
    assert len(bge.bodies) == 1
    other = Recorder(dims=64, script=[httpx.Response(400, json={"error": {
        "message": "input is empty"}})])  # any other 400 is the inputs' still
    with pytest.raises(RejectedInputError):
        make("openai", "http://vllm:8000/v1#m", other, dimensions=40).embed(["x"])
    assert len(other.bodies) == 1


def test_an_error_answered_with_status_200_is_read_by_its_code() -> None:
    """OpenRouter answers some errors with 200 and the HTTP code inside: one not worth
    retrying (402, no credits) was retried as a malformed answer until the retries ran out;
    it now stops the call at once, naming it. A retryable one is retried."""
    credits = httpx.Response(200, json={"error": {"code": 402, "message": "Insufficient "
                                                  "credits. Add more using https://x"}})
    h = Recorder(dims=64, script=[credits])
    p = make("openrouter", "qwen/qwen3-embedding-0.6b", h, dimensions=64)
    with pytest.raises(IncompleteEmbeddingError, match="HTTP 200 carrying an error 402: "
                                                       "Insufficient credits") as e:
        p.embed(["x"])
    assert len(h.bodies) == 1 and isinstance(e.value.__cause__, ProviderHTTPError)
    busy = httpx.Response(200, json={"error": {"code": 502, "message": "upstream busy"}})
    h2 = Recorder(dims=64, script=[busy])
    p2 = make("openrouter", "qwen/qwen3-embedding-0.6b", h2, dimensions=64)
    assert p2.embed(["x"]).shape == (1, 64) and len(h2.bodies) == 2 and p2.usage.retries == 1
    big = httpx.Response(200, json={"error": {"code": 413, "message": "too many inputs"}})
    h3 = Recorder(dims=64, script=[big])
    p3 = make("openrouter", "qwen/qwen3-embedding-0.6b", h3, dimensions=64)
    assert p3.embed(["x", "y"]).shape == (2, 64)  # split, as a 413 status is
    assert [len(b["input"]) for b in h3.bodies] == [2, 1, 1]


@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_narrower_or_unmatryoshka_rows_stay_an_error() -> None:
    """Rows narrower than asked cannot be made whole; a width below the smallest Matryoshka
    size is no prefix worth cutting to. Both fail at once with the ``dimensions=`` hint."""
    narrow = Recorder(dims=32, honour_dimensions=False)
    with pytest.raises(IncompleteEmbeddingError, match="pass dimensions=32") as e:
        make("openrouter", "m", narrow, dimensions=64).embed(["x"])
    assert len(narrow.bodies) == 1 and e.value.failed == [0]
    tiny = Recorder(dims=64, honour_dimensions=False)
    with pytest.raises(IncompleteEmbeddingError, match="64-wide rows but 16 were expected"):
        make("openrouter", "m", tiny, dimensions=16).embed(["x"])
    # a width guessed from the model's name, not asked for: wider rows are another model
    other = Recorder(dims=4096, honour_dimensions=False)
    with pytest.raises(IncompleteEmbeddingError, match="4096-wide rows but 1024 were expected"):
        make("openrouter", "qwen/qwen3-embedding-0.6b", other).embed(["x"])
    # nor to a width the server never saw (TEI takes no dimensions): its rows need be no prefix
    def tei(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[det_vector(t, 64).tolist()
                                         for t in json.loads(request.content)["inputs"]])

    with pytest.raises(IncompleteEmbeddingError, match="64-wide rows but 40 were expected"):
        connect("tei", "http://h:1", transport=httpx.MockTransport(tei),
                dimensions=40).embed(["x"])


def test_unknown_width_is_probed_once() -> None:
    h = Recorder(dims=24)
    p = make("openai", "some-model", h)
    assert p.dimensions == 24 and p.dimensions == 24
    assert len(h.bodies) == 1
    assert p.embed(["a"]).shape == (1, 24)


@pytest.mark.parametrize("scheme", ["openai", "ollama", "tei", "smysl"])
def test_empty_input_sends_nothing(scheme: str) -> None:
    """No texts, no request: not even the (billed) width probe, and a server that is down does
    not matter. The width is what was asked for, else the known one, else 0."""
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    p = connect(scheme, "http://h:1#m", transport=httpx.MockTransport(down), max_retries=0)
    assert p.embed([]).shape == (0, 0) and p.embed_queries([], dimensions=32).shape == (0, 32)
    assert p.embed([]).dtype == np.float32 and p.usage.requests == p.usage.failed_requests == 0
    with pytest.raises(ValueError, match="positive integer"):
        p.embed([], dimensions=0)
    known = connect(scheme, "http://h:1#m", transport=httpx.MockTransport(down), dimensions=64)
    assert known.embed([]).shape == (0, 64) and known.embed([], dimensions=32).shape == (0, 32)
    with pytest.raises(ValueError, match=r"must be in 32\.\.64"):
        known.embed([], dimensions=65)  # checked against a known width as any call's is


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
    if status == 401:  # a preset's several variables: either one (it read "$A,B")
        h = Recorder(script=[httpx.Response(401, json={"error": {"message": "nope"}})])
        with pytest.raises(ProviderHTTPError, match=r"check the API key: \$DEEPINFRA_API_KEY "
                                                    r"or \$DEEPINFRA_TOKEN\)"):
            make("deepinfra", "m", h, dimensions=16).embed(["a"])


class Refusing(Recorder):
    """Answers 400 to any request holding a text in ``refused``, as an API refuses a batch
    for one input in it without saying which."""

    def __init__(self, refused: set[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.refused = refused

    def __call__(self, request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        if self.refused & set(texts):
            self.requests.append(request)
            self.bodies.append(json.loads(request.content))
            return httpx.Response(400, json={"error": {"message": "bad input"}})
        return super().__call__(request)


@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_other_4xx_is_not_retried_and_names_inputs() -> None:
    h = Refusing({"c"})
    p = make("openai", "m", h, dimensions=16, max_batch_texts=2, max_concurrency=1)
    with pytest.raises(RejectedInputError, match=r"input #2, sent alone, was refused: HTTP 400: "
                                                 r".*bad input") as e:
        p.embed(["a", "b", "c", "d", "e"])
    assert e.value.failed == [2, 3, 4] and e.value.total == 5
    assert e.value.refused == 2  # the one refused, of the failed (the rest were never sent)
    assert isinstance(e.value, ValueError) and isinstance(e.value, IncompleteEmbeddingError)
    # the 400 was not retried: the batch [c, d] halved, c refused alone; e never sent
    assert [b["input"] for b in h.bodies] == [["a", "b"], ["c", "d"], ["c"]]


@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_a_refused_batch_is_halved_to_the_input_refused() -> None:
    """A review's: a 400 for a batch named the batch's first input (#0 of 32), whichever the
    API refused. Halves find it (refusals are not billed; what a half embeds is kept): the
    error names #21, and every other input of the call is embedded, kept for a resume."""
    texts = [f"t{i}" for i in range(32)]
    h = Refusing({"t21"})
    p = make("openai", "m", h, dimensions=16, max_batch_texts=32, max_concurrency=1)
    with pytest.raises(RejectedInputError, match=r"input #21, sent alone, was refused") as e:
        p.embed(texts)
    assert e.value.failed[0] == 21 and 20 in e.value.done and e.value.refused == 21
    refusals = [b for b in h.bodies if "t21" in b["input"]]
    assert len(refusals) == 6 and len(h.bodies) <= 12  # 32, 16, 8, 4, 2, 1
    h.refused, before = set(), len(h.bodies)
    again = p.embed(texts)  # resumes: only what the refusal stopped is sent
    np.testing.assert_array_equal(again, make("openai", "m", Recorder(), dimensions=16)
                                  .embed(texts))
    assert [t for b in h.bodies[before:] for t in b["input"]] == texts[21:]


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
    # the rate-limit headers where no Retry-After is given: the spent limit's reset
    # (a 429's: OpenAI sends them with every answer, where a 503 is no limit's)
    limits = {"x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s",
              "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30.5s"}

    def wait(headers: dict[str, str], status: int = 429) -> float | None:
        return retry_after_seconds(httpx.Headers(headers), status)

    assert wait(limits) == 90.5 and wait(limits, 503) is None
    assert wait({**limits, "Retry-After": "2"}) == 2 == wait({**limits, "Retry-After": "2"}, 503)
    assert wait({**limits, "x-ratelimit-remaining-tokens": "5"}) is None  # none spent
    assert wait({"x-ratelimit-reset-tokens": "250ms", "x-ratelimit-reset-requests": "6m0s"}) \
        == 0.25  # which is spent, unsaid: the soonest
    assert wait({"x-ratelimit-reset": "12"}) == 12
    # the spent limit without a reset of its own: the shared one, not the other's
    assert wait({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset": "7",
                 "x-ratelimit-remaining-tokens": "9", "x-ratelimit-reset-tokens": "1ms"}) == 7
    for unix in (time.time() + 30, (time.time() + 30) * 1000):  # seconds, milliseconds
        epoch = wait({"x-ratelimit-reset": str(unix)})
        assert epoch is not None and 25 < epoch <= 30, epoch
    for bad in ("soon", "-1", "1x", "nan", ""):
        assert wait({"x-ratelimit-reset-requests": bad}) is None


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


_USAGE = {"usage": {"prompt_tokens": 5}}


@pytest.mark.parametrize(("bad", "billed"), [
    (httpx.Response(200, text="{not json"), False),
    (httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0] * 16}], **_USAGE}),
     True),  # one row short
    (httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0] * 16},
                                        {"index": 1, "embedding": [1.0] * 15}], **_USAGE}),
     True),  # ragged
    (httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0] * 16},
                                        {"index": 0, "embedding": [1.0] * 16}]}),
     None),  # twice index 0: billed all the same (a review's: it went uncounted), no usage
    (httpx.Response(200, text='{"data": [{"index": 0, "embedding": [NaN' + ', 1.0' * 15 +
                              ']}, {"index": 1, "embedding": [' + '1.0, ' * 15 + '1.0]}], '
                              '"usage": {"prompt_tokens": 5}}'), True),  # a NaN in a row
    (httpx.Response(200, json={"object": "error"}), False),
    (httpx.Response(200, json={"data": [None, None]}), None),  # was not retried
    (httpx.Response(200, json=[1, 2]), False),  # no object at all
])
def test_malformed_bodies_are_retried(bad: httpx.Response, billed: bool | None) -> None:
    """Retried; an answer that is an embeddings answer was billed even though its rows are
    refused, so its usage counts (before, only the answer that replaced it did); None: billed,
    with no count of its own (counted here)."""
    h = Recorder(script=[bad])
    p = make("openai", "m", h, dimensions=16)
    out = p.embed(["a", "b"])
    ref = np.stack([det_vector(t, 16) for t in ["a", "b"]])
    np.testing.assert_allclose(out, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-6)
    assert p.usage.retries == 1
    if billed is None:
        assert (p.usage.requests, p.usage.texts) == (2, 4) and p.usage.tokens > 6
        return
    assert (p.usage.requests, p.usage.texts, p.usage.tokens) == \
        ((2, 4, 11) if billed else (1, 2, 6))


def test_an_answer_malformed_twice_is_not_bought_again() -> None:
    """Each 2xx answer is billed, and one malformed once is mostly malformed again (a gateway
    that names a field its own way): two are tried, not max_retries + 1 (7)."""
    short = httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0] * 16}],
                                      **_USAGE})
    h = Recorder(script=[short, short, short])
    p = make("openai", "m", h, dimensions=16)
    assert p.config.max_retries > 2
    with pytest.raises(IncompleteEmbeddingError, match="not tried again") as e:
        p.embed(["a", "b"])
    assert "1 embeddings for 2 inputs" in str(e.value) and len(h.bodies) == 2
    assert (p.usage.requests, p.usage.tokens, p.usage.retries, p.usage.failed_requests) == \
        (2, 10, 1, 1)


@pytest.mark.parametrize(("usage", "reported"), [
    ({"prompt_tokens": 6.0, "total_tokens": 6.0}, 6),  # a float that is a count
    ({"prompt_tokens": None, "total_tokens": 6}, 6),  # null beside total_tokens
    ({"total_tokens": 6}, 6),
    ({"prompt_tokens": 6.5}, None),  # no count: the local estimate, the rows kept
    ({"prompt_tokens": "6"}, None),
    ({"prompt_tokens": -1}, None),
])
@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_token_counts_are_read_without_refusing_good_rows(usage: dict[str, Any],
                                                          reported: int | None) -> None:
    data = [{"index": 0, "embedding": det_vector("a", 16).tolist()}]
    h = Recorder(script=[httpx.Response(200, json={"data": data, "usage": usage})])
    p = make("openai", "m", h, dimensions=16)
    p.embed(["a"])
    assert len(h.bodies) == 1 and p.usage.retries == 0 and p.usage.requests == 1
    if reported is None:  # "a" + EOS bounded by UTF-8 bytes + 1
        assert (p.usage.reported_tokens, p.usage.estimated_tokens) == (0, 2)
    else:
        assert p.usage.reported_tokens == p.usage.tokens == reported


def test_payload_too_large_is_split() -> None:
    h = Recorder(script=[httpx.Response(413, text="too big")])
    p = make("openai", "m", h, dimensions=16)
    out = p.embed([f"t{i}" for i in range(5)])
    assert [len(b["input"]) for b in h.bodies] == [5, 3, 2]  # halved (rounded up)
    assert out.shape == (5, 16) and p.usage.requests == 2


def _tei_refusing_long_inputs(sizes: list[int]) -> httpx.MockTransport:
    """TEI with its default batch limit (32) that answers an over-long input (no truncation)
    with 413, as TEI's validation does."""
    def handler(request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["inputs"]
        sizes.append(len(inputs))
        if len(inputs) > 32:
            return httpx.Response(413, json={"error": f"batch size {len(inputs)} > maximum "
                                             "allowed batch size 32", "error_type": "Validation"})
        if any(len(t) > 100 for t in inputs):
            return httpx.Response(413, json={"error": "`inputs` must have less than 512 tokens. "
                                             "Given: 900", "error_type": "Validation"})
        return httpx.Response(200, json=[det_vector(t, 8).tolist() for t in inputs])

    return httpx.MockTransport(handler)


@pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer")
def test_one_input_tei_refuses_is_a_rejected_input_and_leaves_the_batch_size() -> None:
    """A 413 for one input alone is that input's error (a ValueError, like the engine's input
    errors), not a batch to split further; and the 413s that led to it do not cut later calls
    to one text per request."""
    sizes: list[int] = []
    p = connect("tei", "http://tei:8080", transport=_tei_refusing_long_inputs(sizes),
                dimensions=8, max_concurrency=1)
    texts = [f"t{i}" for i in range(31)] + ["x" * 500]
    with pytest.raises(RejectedInputError, match="input #31 was refused on its own") as e:
        p.embed(texts)
    assert isinstance(e.value, ValueError) and e.value.failed == [31]
    assert e.value.done == list(range(31)) and "less than 512 tokens" in str(e.value)
    assert sizes[-2:] == [1, 1]  # bisected down to the input itself, then not retried
    sizes.clear()
    out = p.embed([f"u{i}" for i in range(64)])
    assert sizes == [32, 32] and out.shape == (64, 8)
    # A real limit is still learned, once a request of the smaller size went through.
    q = connect("tei", "http://tei:8080", transport=_tei_refusing_long_inputs(sizes),
                dimensions=8, max_concurrency=1, max_batch_texts=64)
    sizes.clear()
    q.embed([f"u{i}" for i in range(64)])
    q.embed([f"u{i}" for i in range(64)])
    assert sizes == [64, 32, 32, 32, 32]


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
    h = Recorder(dims=64)
    p = make("dashscope", "text-embedding-v4", h, dimensions=64)
    p.embed([f"t{i}" for i in range(25)])
    line = str(p.usage)
    assert "\n" not in line
    assert line.startswith("dashscope:text-embedding-v4: 75 tokens (provider-reported), 25 texts,"
                           " 3 requests, 0 retries, $0.000005 at $0.07/1M tokens")
    assert p.usage.snapshot()["cost"] == pytest.approx(75 * 0.07 / 1e6)
    p.usage.reset()
    assert p.usage.tokens == 0 and p.usage.requests == 0


@pytest.mark.parametrize("bad", [0, -3, True, 3.7, "32", "abc", [32]])
def test_provider_dimensions_are_a_positive_integer(bad: object) -> None:
    """``dimensions=`` at construction is an int >= 1: a float or string was turned into some
    int (3.7 -> 3, "32" -> 32) and sent, so the rows asked for were not the ones given."""
    with pytest.raises(ValueError, match=r"dimensions must be a positive integer, got"):
        connect("openai", "http://h:1#m", dimensions=bad)
    assert connect("openai", "http://h:1#m", dimensions=np.int64(48)).request_dimensions == 48


def _chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and the errors it was raised from."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def test_secrets_stay_out_of_names_reprs_and_errors() -> None:
    """A key, a header's value or a URL's password never reaches a provider's name, repr or
    error message, even from an upstream whose error bodies echo the request's headers."""
    def echo(status: int) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(
            status, json={"error": {"message": "no", "headers": dict(request.headers),
                                    "url": str(request.url)}}))

    url = "http://u:URLSECRET@h:1/v1"
    for status in (400, 401, 404, 500):
        p = connect("openai", f"{url}#m", transport=echo(status), api_key="KEYSECRET",
                    headers=(("X-Token", "HDRSECRET"),), max_retries=0, dimensions=16)
        with pytest.raises(Exception) as e:
            p.embed(["x"])
        bodies = [str(x.body) for x in _chain(e.value) if isinstance(x, ProviderHTTPError)]
        assert bodies and all("headers" in body for body in bodies)  # the body is kept...
        for secret in ("KEYSECRET", "HDRSECRET", "URLSECRET",
                       base64.b64encode(b"u:URLSECRET").decode()):
            assert secret not in str(e.value), (status, str(e.value))
            assert all(secret not in body for body in bodies), (status, bodies)  # ...less them
            assert secret not in repr(p) and secret not in p.name
            assert secret not in repr(p.config)
    tei = connect("tei", "http://u:URLSECRET@h:1", transport=echo(413), api_key="KEYSECRET",
                  max_retries=0, dimensions=16)
    assert "URLSECRET" not in tei.name and "URLSECRET" not in repr(tei)
    assert "h:1" in tei.name
    with pytest.raises(Exception, match="refused on its own as too large") as too_large:
        tei.embed(["x"])  # one input the server refuses: its 413 body is quoted
    assert "KEYSECRET" not in str(too_large.value)
    assert all("KEYSECRET" not in str(x.body) for x in _chain(too_large.value)
               if isinstance(x, ProviderHTTPError))
    assert base64.b64encode(b"u:URLSECRET").decode() not in str(too_large.value)


def test_length_is_checked_from_the_first_call(tokenizer_path, tmp_path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With the Qwen3 tokenizer in the Hugging Face cache, an over-long text is refused on the
    first call. Before, a mere check used a tokenizer only once an earlier call had loaded it
    (truncate=True): DashScope got the 18,002-token text whole (it cuts past 8,192 without a
    word), and the same text was refused after a truncating call."""
    import shutil

    from qwen_tiny import fake_hub_cache

    from smysl.tokenize import InputTooLongError

    src = tmp_path / "tok"
    src.mkdir()
    shutil.copy(tokenizer_path, src / "tokenizer.json")
    fake_hub_cache(tmp_path / "hf" / "hub", "Qwen/Qwen3-Embedding-0.6B", src)
    h = Recorder(dims=64)
    p = make("dashscope", "text-embedding-v4", h, dimensions=64)
    long = "слово " * 9000
    with pytest.raises(InputTooLongError, match=r"18002 tokens .* at most 8192"):
        p.embed([long])
    assert h.bodies == []
    p.embed([long], truncate=True)
    assert len(h.bodies[-1]["input"][0]) < len(long) // 2


def test_a_max_tokens_given_to_a_truncating_server_is_applied_here(
        qwen_tok: Any, tokenizer_path) -> None:
    """`max_tokens=N` with `truncate=True` on TEI/Ollama/smysl: the server cut at its own
    limit instead (the vector of the whole text came back); now the text is cut to N tokens
    here, as the local engine does with `max_tokens=N`, and refused without truncate."""
    from smysl.tokenize import InputTooLongError

    long = "Смысл жизни — в поиске смысла. " * 10
    want = qwen_tok.encode([long], truncate=True, max_tokens=20)[0]
    for scheme, rest in (("smysl", "http://h:1#m"), ("tei", "http://h:1"),
                         ("ollama", "http://h:1#m")):
        bodies: list[dict[str, Any]] = []

        def handler(request: httpx.Request, bodies=bodies, scheme=scheme) -> httpx.Response:
            body = json.loads(request.content)
            bodies.append(body)
            texts = body.get("input", body.get("inputs"))
            rows = [det_vector(t, 16).tolist() for t in texts]
            if scheme == "tei":
                return httpx.Response(200, json=rows)
            if scheme == "ollama":
                return httpx.Response(200, json={"embeddings": rows})
            return httpx.Response(200, json={"data": [{"index": i, "embedding": r}
                                                      for i, r in enumerate(rows)]})

        p = connect(scheme, rest, transport=httpx.MockTransport(handler), dimensions=16,
                    max_tokens=20, tokenizer=tokenizer_path)
        with pytest.raises(InputTooLongError, match="at most 20"):
            p.embed([long])
        p.embed([long], truncate=True)
        sent = bodies[-1].get("input", bodies[-1].get("inputs"))[0]
        assert qwen_tok.encode([sent])[0] == want, scheme


def test_a_closed_provider_says_so_at_once() -> None:
    """After close(), a call retried httpx's "client has been closed" as a connection error
    (7 attempts, ~18 s), marked the upstream down and started health probes."""
    h = Recorder()
    p = make("openai", "m", h, dimensions=16)
    p.embed(["a"])
    p.close()
    with pytest.raises(IncompleteEmbeddingError, match="the provider is closed") as e:
        p.embed(["b"])
    assert p.sleeps == [] and p.healthy and len(h.bodies) == 1  # type: ignore[attr-defined]
    assert e.value.failed == [0]


@pytest.mark.parametrize("honours", [True, False])
def test_ollama_is_sent_the_width_asked_for(honours: bool) -> None:
    """Ollama's /api/embed takes `dimensions` (0.11+): it was never sent, and rows of the
    model's full width for `dimensions=40` were an error. An older Ollama ignores it: its
    full rows are cut here, as a server-side `dimensions` would."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        width = body.get("dimensions", 64) if honours else 64
        rows = [det_vector(t, 64)[:width] for t in body["input"]]
        return httpx.Response(200, json={"embeddings": [_unit(r[None])[0].tolist()
                                                        for r in rows]})

    p = connect("ollama", "http://h:1#qwen3-embedding:8b",
                transport=httpx.MockTransport(handler), dimensions=40)
    out = p.embed(["x", "y"])
    assert bodies[0]["dimensions"] == 40 and out.shape == (2, 40)
    np.testing.assert_allclose(out, _unit(np.stack([det_vector(t, 64)[:40] for t in "xy"])),
                               rtol=1e-5)


def test_a_remote_api_client_says_why_it_does_not_pickle() -> None:
    # a LangChain adapter sent to a worker pool raised "cannot pickle '_thread.lock' object"
    import pickle

    from smysl.registry import load

    client = load("tei:http://127.0.0.1:9")
    with pytest.raises(TypeError, match=r"remote API .* cannot be pickled.*in each worker"):
        pickle.dumps(client)
    client.close()


def test_what_a_server_answers_for_an_upstream_failure() -> None:
    """One rule for both ways a call runs out of time: a job timeout is a 504 unless a rate
    limit ended it (then 429 with the upstream's wait); retries spent answer as the last
    error (a connection error's 502 made a timeout a 502)."""
    from smysl.base import UpstreamError
    from smysl.providers.errors import (
        JobTimeoutError,
        ProviderError,
        ProviderHTTPError,
        RetriesExhaustedError,
        answered_as,
    )

    def answer(e: UpstreamError) -> tuple[int, float | None]:
        return e.status_to_answer, e.retry_after

    limited = ProviderHTTPError("429", 429, retry_after=3.0)
    assert answer(answered_as(JobTimeoutError("t"), ProviderError("reset"))) == (504, None)
    assert answer(answered_as(JobTimeoutError("t"), limited)) == (429, 3.0)
    assert answer(answered_as(JobTimeoutError("t"), None)) == (504, None)
    assert answer(answered_as(RetriesExhaustedError("r"), ProviderHTTPError("x", 503))) == (
        503, None)
    assert answer(answered_as(RetriesExhaustedError("r"), ProviderError("reset"))) == (502, None)
    assert answer(ProviderHTTPError("401", 401)) == (502, None)


def test_base_urls_without_a_scheme_keep_a_paid_api_s_key_off_plain_http(monkeypatch) -> None:
    """`OPENROUTER_BASE_URL=openrouter.ai/api/v1` became http:// and the key went out in the
    clear; `ftp://x` was taken; a blank variable was "http:" (a DNS error naming nothing)."""
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    monkeypatch.setenv("OPENROUTER_BASE_URL", "openrouter.ai/api/v1")
    assert connect("openrouter", "qwen/qwen3-embedding-8b").base_url == \
        "https://openrouter.ai/api/v1"
    monkeypatch.setenv("OPENROUTER_BASE_URL", "ftp://x")
    with pytest.raises(ValueError, match=r"\$OPENROUTER_BASE_URL 'ftp://x' is no http:// or "
                                         r"https:// URL"):
        connect("openrouter", "qwen/qwen3-embedding-8b")
    monkeypatch.setenv("OPENROUTER_BASE_URL", "  ")
    assert connect("openrouter", "qwen/qwen3-embedding-8b").base_url == \
        PRESETS["openrouter"].base_url
    # a server on the network keeps http for host:port (Ollama's, vLLM's, smysl's)
    monkeypatch.setenv("SMYSL_URL", "gpu-box:8000")
    assert connect("smysl", "m").base_url == "http://gpu-box:8000/v1"


def test_a_url_without_its_scheme_in_the_model_string_is_the_url(monkeypatch) -> None:
    """A review's: `openai:gpu-box:8001/v1#M` went to api.openai.com (with the user's key) as
    the model `gpu-box:8001/v1`; `tei:gpu-box:8080` to localhost:8080; `openai:ftp://x#y` to
    OpenAI too. A URL written as the docs allow, without its scheme, is the URL (before `#`,
    or TEI's alone); one of another scheme is refused; model names with a colon (Ollama's
    tags, digits too) stay names."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    for scheme, rest, url, model in (
            ("openai", "gpu-box:8001/v1#Qwen/Qwen3-Embedding-0.6B", "https://gpu-box:8001/v1",
             "Qwen/Qwen3-Embedding-0.6B"),
            ("smysl", "gpu-box:8000#m", "http://gpu-box:8000/v1", "m"),
            ("ollama", "gpu-box:11434#qwen3-embedding:8b", "http://gpu-box:11434",
             "qwen3-embedding:8b"),
            ("ollama", "qwen3-embedding:8b", "http://localhost:11434", "qwen3-embedding:8b"),
            ("tei", "gpu-box:8080", "http://gpu-box:8080", None)):
        p = connect(scheme, rest)
        assert p.base_url == url, (scheme, rest)
        if model is not None:
            assert p.model == model
    with pytest.raises(ValueError, match="'ftp://x' is no http:// or https:// URL"):
        connect("openai", "ftp://x#y")
    # a tag of digits is a model's, not a port (a diff review's: "no model given")
    assert connect("ollama", "my-embed:2").model == "my-embed:2"
    assert connect("smysl", "qwen3:8").model == "qwen3:8"
    from smysl.providers.rerankers import connect_reranker

    assert connect_reranker("tei", "gpu-box:8080").base_url == "http://gpu-box:8080"
    assert connect_reranker("jina", "gpu-box:9000#jr").base_url.startswith("https://gpu-box:9000")


def test_a_smysl_client_reads_its_own_key_variable_first(monkeypatch) -> None:
    h = Recorder(dims=64)
    monkeypatch.setenv("SMYSL_API_KEY", "servers-own")
    monkeypatch.setenv("SMYSL_REMOTE_API_KEY", "for-the-upstream")
    make("smysl", "http://h:8000#m", h, dimensions=64).embed(["x"])
    assert h.requests[0].headers["authorization"] == "Bearer for-the-upstream"
    monkeypatch.delenv("SMYSL_REMOTE_API_KEY")
    make("smysl", "http://h:8000#m", h, dimensions=64).embed(["x"])
    assert h.requests[-1].headers["authorization"] == "Bearer servers-own"


def test_an_upstream_that_echoes_the_key_in_a_200_or_a_row_never_shows_it() -> None:
    """A review's: an error inside a 200 answer (OpenRouter's way) quoted the key in full when
    the upstream echoed it; a malformed body was cut before its secrets were taken out (12
    characters of a key split by the cut stayed); a row's non-number was quoted as sent."""
    key = "sk-or-v1-0123456789SECRETSECRET"

    def answer(body: Any) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(200, json=body(request)))

    def auth(request: httpx.Request) -> str:
        return request.headers["authorization"]

    bodies = [
        lambda r: {"error": {"code": 402, "message": f"no credits for key {auth(r)}"}},
        lambda r: {"error": {"code": 502, "message": f"upstream down for {auth(r)}"}},
        lambda r: {"error": f"bad key {auth(r)}"},
        lambda r: {"x": "y" * 181 + auth(r)},  # the key across the 200-character cut
        lambda r: {"data": [{"index": 0, "embedding": [0.1, auth(r)] + [0.5] * 14}]},
        lambda r: {"data": [{"index": auth(r), "embedding": [0.5] * 16}]},
    ]
    for body in bodies:
        p = connect("openai", "http://h:1/v1#m", transport=answer(body), api_key=key,
                    max_retries=1, dimensions=16, backoff_base=0.0)
        with pytest.raises(Exception) as e:
            p.embed(["x"])
        for err in _chain(e.value):
            assert "SECRET" not in str(err), str(err)
            assert "SECRET" not in str(getattr(err, "body", ""))


@pytest.mark.parametrize("defect", ["first row missing", "duplicate index", "last row missing",
                                    "not an object"])
def test_a_billed_answer_with_rows_out_of_place_is_counted(defect: str) -> None:
    """A review's: an answer whose rows could not be placed (a row missing but the last, an
    index twice) went unrecorded, though billed, while one missing its last row was counted:
    the usage depended on which row was wrong. Every billed 2xx answer counts now."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        n = len(json.loads(request.content)["input"])
        data = [{"index": i, "embedding": det_vector(str(i), 16).tolist()} for i in range(n)]
        if not calls:
            data = {"first row missing": data[1:], "last row missing": data[:-1],
                    "duplicate index": [data[0], *data[:-1]],
                    "not an object": [None, *data[1:]]}[defect]
        calls.append(n)
        return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 3 * n,
                                                                 "total_tokens": 3 * n}})

    p = connect("openai", "http://h:1/v1#m", transport=httpx.MockTransport(handler),
                dimensions=16, max_retries=2, backoff_base=0.0)
    assert p.embed([f"t{i}" for i in range(10)]).shape == (10, 16)
    assert len(calls) == 2 and p.usage.tokens == 60, (defect, p.usage.snapshot())


def test_provider_errors_pickle_whole() -> None:
    """A review's: an error whose constructor takes more than its message did not unpickle
    (``cls(*args)``), so a Ray actor's refusal reached the driver as a TypeError. Every kind
    comes back with its attributes, and a part's refusal moves to its place in the whole."""
    import pickle

    from smysl.providers.errors import InputRefusedError, PayloadTooLargeError

    cause = InputRefusedError("m: input #3, sent alone, was refused", 400, '{"e": 1}', 3)
    rows = np.ones((3, 4), np.float32)
    error = RejectedInputError("m: 2 of 5 inputs", [3, 4], 5, cause, done=[0, 1, 2], rows=rows)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is RejectedInputError and str(back) == str(error)
    assert (back.refused, back.failed, back.done, back.total) == (3, [3, 4], [0, 1, 2], 5)
    assert back.reason == 'HTTP 400: {"e": 1}' and np.array_equal(back.rows, rows)
    assert back.cause.status == 400 and back.status_to_answer == error.status_to_answer
    big = pickle.loads(pickle.dumps(PayloadTooLargeError("too big", 413, "", retry_after=2.0)))
    assert (big.status, big.retry_after, str(big)) == (413, 2.0, "too big")
    moved = back.placed(range(10, 15), 20)
    assert (moved.refused, moved.failed, moved.done, moved.total) == (13, [13, 14],
                                                                      [10, 11, 12], 20)
    # its message's places were the part's: said so
    assert str(moved).endswith("(places counted from input #10 of 20)")
    # a part of the texts a call did not hold already: its places anywhere
    spread = back.placed([1, 4, 6, 7, 9], 12)
    assert (spread.refused, spread.failed, spread.done) == (7, [7, 9], [1, 4, 6])
    assert str(spread).endswith("(places counted among 5 of 12 inputs)")
    # a review's: the timeout errors (TimeoutError, an OSError, too) did not rebuild at all
    import copy

    from smysl.providers import errors as E

    timeout = E.JobTimeoutError("m: the call ran past job_timeout", status_to_answer=504)
    kinds = [timeout, E.RequestTimeoutError("m: no answer"), E.ProviderTimeoutError("t"),
             E.RetriesExhaustedError("r"), E.MalformedResponseError("bad"),
             E.InvalidRowError("row"), E.ProviderError("p", reason="why"),
             E.PartialEmbeddingError("m: 1 of 2", [1], 2, timeout, done=[0], rows=rows[:1]),
             E.IncompleteEmbeddingError("m: 2 of 2", [0, 1], 2, timeout), error, big]
    for e in kinds:
        for again in (pickle.loads(pickle.dumps(e)), copy.copy(e), copy.deepcopy(e)):
            assert type(again) is type(e) and str(again) == str(e), type(e).__name__
            assert again.status_to_answer == e.status_to_answer
    assert isinstance(pickle.loads(pickle.dumps(timeout)), TimeoutError)


def test_an_ollama_that_is_not_running_is_said_so() -> None:
    """A review's: `ollama:NAME` (as `smysl models` lists a store model) with no daemon
    ended in a bare "connection error: ConnectError(...)", no word of `ollama serve` or of
    ollama-store:NAME, which runs the same file without it."""
    from smysl.providers import connect

    m = connect("ollama", "http://127.0.0.1:1#qwen3-embedding:0.6b", dimensions=32,
                max_retries=0)
    with pytest.raises(Exception, match=r"connection error: .*; is Ollama running there "
                                        r"\(`ollama serve`\)\? .*ollama-store:NAME"):
        m.embed(["x"])
    m.close()
