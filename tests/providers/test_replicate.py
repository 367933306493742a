"""The ``replicate:`` provider against a loopback fake of Replicate's predictions API: answers
within ``Prefer: wait``, answers after polling ``urls.get``, failed predictions, cancelling at
the job deadline, and per-run pricing (issue 11 item 12)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from provider_fakes import FakeServer, expected

import smysl
from smysl.providers import IncompleteEmbeddingError, Provider, connect
from smysl.providers.errors import JobTimeoutError
from smysl.providers.replicate import KNOWN_VERSIONS
from smysl.registry import split

MODEL = "lucataco/qwen3-embedding-8b"
pytestmark = pytest.mark.filterwarnings("ignore:no Qwen3 tokenizer:RuntimeWarning")
FAST = {"backoff_base": 0.001, "backoff_max": 0.01}


def replicate(srv: FakeServer, model: str = MODEL, **options: Any) -> Provider:
    p = connect("replicate", f"{srv.url}/v1#{model}", dimensions=64, **{**FAST, **options})
    p.sleeps = []  # type: ignore[attr-defined]
    p.sleep = p.sleeps.append  # type: ignore[attr-defined]
    return p


def test_scheme_preset_and_key() -> None:
    """Issue 11 item 12: ``replicate:`` is a registered scheme with a preset and a key."""
    assert split(f"replicate:{MODEL}") == ("replicate", MODEL)
    m = smysl.load(f"replicate:{MODEL}")
    assert isinstance(m, Provider) and m.base_url == "https://api.replicate.com/v1"
    assert m.dimensions == 4096 and m.version == KNOWN_VERSIONS[MODEL]  # type: ignore[attr-defined]
    assert m.usage.price_per_request == 0.001 and m.usage.price_per_mtok is None
    m.close()
    with pytest.raises(ValueError, match="OWNER/NAME"):
        connect("replicate", "no-owner")


def test_missing_token_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN")
    with pytest.raises(ValueError, match="REPLICATE_API_TOKEN"):
        connect("replicate", MODEL)


def test_sync_answer(tokenizer_path: Path, qwen_tok: Any) -> None:
    """Issue 11 item 12: predictions answered within ``Prefer: wait`` (no polling); batches
    of 32; every row in place; cost per run."""
    texts = [f"текст {i}" for i in range(40)]
    with FakeServer(dims=64, tokenizer=qwen_tok) as srv:
        m = replicate(srv, tokenizer=tokenizer_path)
        out = m.embed(texts)
        preds = list(srv.predictions.values())
        gets = [r for r in srv.requests if "input" in r]
    np.testing.assert_allclose(out, expected(texts, 64, 64), rtol=1e-5, atol=1e-6)
    assert all(p["version"] == KNOWN_VERSIONS[MODEL] and p["dims"] == 64 for p in preds)
    assert {p["prefer"] for p in preds} == {"wait=59"}  # the default 60 s timeout less 1 s
    sent = {tuple(json.loads(g["input"]["text"])) for g in gets}  # a JSON array in a string
    assert sent == {tuple(texts[:32]), tuple(texts[32:])}
    assert m.usage.requests == 2 and m.usage.counted_tokens == srv.billed_tokens
    assert m.usage.cost == pytest.approx(2 * 0.001)
    assert "$0.001/request" in str(m.usage) and m.sleeps == []  # type: ignore[attr-defined]


def test_polling_path() -> None:
    """Issue 11 item 12: a prediction still starting when the wait ends is polled at its
    ``urls.get`` until it succeeds, with growing pauses."""
    with FakeServer(dims=64, replicate_polls=3) as srv:
        m = replicate(srv)
        out = m.embed(["a", "b"])
        assert srv.predictions["p0"]["status"] == "succeeded" and len(srv.predictions) == 1
    np.testing.assert_allclose(out, expected(["a", "b"], 64, 64), rtol=1e-5, atol=1e-6)
    assert m.sleeps == [0.25, 0.5, 1.0, 2.0]  # type: ignore[attr-defined]


def test_failed_prediction_is_reported_not_repeated() -> None:
    """Issue 11 item 12: a failed prediction raises with Replicate's error; it is not sent
    again. It ran, so it was billed: its run counts in usage and cost."""
    with FakeServer(dims=64, replicate_error="CUDA out of memory") as srv:
        m = replicate(srv, max_retries=3)
        with pytest.raises(IncompleteEmbeddingError, match="prediction p0 failed: CUDA out of"):
            m.embed(["a"])
        assert len(srv.predictions) == 1 and m.usage.failed_requests == 1
        assert m.usage.requests == 1 and m.usage.cost == pytest.approx(0.001)


def test_a_prediction_past_the_job_deadline_is_cancelled() -> None:
    """Issue 11 items 7 and 12: polling stops at ``job_timeout`` and the prediction is
    cancelled so that it stops costing."""
    with FakeServer(dims=64, replicate_polls=10_000) as srv:
        m = replicate(srv, job_timeout=0.5)
        m.sleep = time.sleep
        t0 = time.perf_counter()
        with pytest.raises(IncompleteEmbeddingError) as e:
            m.embed(["a"])
        assert time.perf_counter() - t0 < 1.5
        assert isinstance(e.value.cause, JobTimeoutError) and srv.cancelled == ["p0"]
        # it ran until cancelled: Replicate bills that run, so usage counts it (it read 0)
        assert (m.usage.requests, m.usage.failed_requests) == (1, 1)
        assert m.usage.cost == pytest.approx(0.001)


def test_a_prediction_without_an_id_is_a_malformed_answer_retried() -> None:
    """A prediction still starting without an id cannot be polled: a malformed answer, retried
    (``"urls": null`` was an AttributeError, neither retried nor naming Replicate)."""
    from provider_fakes import Fault

    with FakeServer(dims=64, replicate_polls=1) as srv:
        m = replicate(srv, max_retries=2)
        srv.script.append(Fault(mutate=lambda b: {**b, "id": None}))  # its urls are no use
        out = m.embed(["a"])
        np.testing.assert_allclose(out, expected(["a"], 64, 64), rtol=1e-5, atol=1e-6)
        assert m.usage.retries == 1
    with FakeServer(dims=64, replicate_polls=1) as srv:  # no urls, an id: polled by its id
        m = replicate(srv, max_retries=2)
        srv.script.append(Fault(mutate=lambda b: {**b, "urls": None}))
        out = m.embed(["a"])
        np.testing.assert_allclose(out, expected(["a"], 64, 64), rtol=1e-5, atol=1e-6)
        assert m.usage.retries == 0


def test_the_key_goes_to_the_base_url_only() -> None:
    """A review's: a prediction's ``urls.get``/``urls.cancel`` naming another host (plain
    http here) were polled with the API key; behind a proxy they name Replicate, past it.
    Polls and the cancel go to the base URL's ``/predictions/{id}``."""
    from provider_fakes import Fault

    with FakeServer(dims=64) as other, FakeServer(dims=64, replicate_polls=10_000) as srv:
        m = replicate(srv, job_timeout=0.6)
        m.sleep = time.sleep
        elsewhere = f"{other.url}/v1/predictions/p0"
        srv.script.append(Fault(mutate=lambda b: {
            **b, "urls": {"get": elsewhere, "cancel": f"{elsewhere}/cancel"}}))
        with pytest.raises(IncompleteEmbeddingError):
            m.embed(["a"])
        assert other.paths == [] and other.headers_seen == [] and other.connections == 0
        assert srv.cancelled == ["p0"]  # the cancel went to the base URL too


def test_official_models_and_other_input_schemas() -> None:
    """Models without a version go to ``/models/OWNER/NAME/predictions``; the input field
    names are options for models whose author chose others."""
    with FakeServer(dims=64) as srv:
        m = replicate(srv, "someone/qwen3-embedding-8b")
        m.embed(["a"])
        assert "version" not in srv.requests[-1] and m.version == ""  # type: ignore[attr-defined]
    other = connect("replicate", "someone/embedder:abc", dimensions=64, input_field="texts",
                    texts_as="list", dimensions_field=None, extra_input={"normalize": False})
    assert other.request_body(["a", "b"], truncate=False) == {
        "version": "abc", "input": {"texts": ["a", "b"], "normalize": False}}
    with pytest.raises(ValueError, match="texts_as"):
        connect("replicate", "a/b:c", texts_as="csv")
    with pytest.raises(TypeError, match="unexpected options"):
        connect("openrouter", "m", input_field="x")


def test_wider_rows_than_a_width_never_sent_are_an_error() -> None:
    """`dimensions_field=None`: the width is never sent, so 128-wide rows for `dimensions=64`
    are no Matryoshka prefix the server chose; they were cut to 64 without a word."""
    with FakeServer(dims=128) as srv:
        m = replicate(srv, dimensions_field=None, max_retries=0)
        with pytest.raises(IncompleteEmbeddingError, match="128"):
            m.embed(["a"])
        assert "embedding_dim" not in json.dumps(srv.requests[-1])
        sent = replicate(srv)  # the width sent: the server's 64-wide rows
        np.testing.assert_allclose(sent.embed(["a"]), expected(["a"], 64, 128), rtol=1e-5)
