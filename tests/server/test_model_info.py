"""What /info, /api/show, /api/tags and /v1/models say comes from the model's ModelInfo."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_helpers import HashEmbedder

import smysl
from smysl.server import ServerConfig, create_app


@pytest.mark.parametrize(("options", "dtype", "level"), [
    ({}, "float32", "F32"),
    ({"quantize": "int8"}, "float32", "int8"),
    ({"dtype": "bfloat16"}, "bfloat16", "BF16"),
])
def test_reported_dtype_and_quantization(tiny_dir: Path, options: dict[str, str], dtype: str,
                                         level: str) -> None:
    model = smysl.load(str(tiny_dir), device="cpu", **options)
    info = model.info()
    assert (info.backend, info.dtype, info.device) == ("qwen3", dtype, "cpu")
    assert info.quantization == options.get("quantize")
    assert info.parameters and info.parameters > 0
    with TestClient(create_app(model, ServerConfig(served_name="tiny"))) as c:
        tei = c.get("/info").json()
        assert tei["model_dtype"] == dtype and tei["model_id"] == tei["served_model_name"] == "tiny"
        # the engine's slice size, and no tuning here (conftest points SMYSL_TUNING nowhere)
        assert tei["slice_tokens"] == info.slice_tokens and info.slice_tokens
        assert tei["tuned_at"] is info.tuned_at is None
        assert tei["max_input_length"] == model.max_tokens
        show = c.post("/api/show", json={"model": "tiny"}).json()
        assert show["details"]["quantization_level"] == level
        assert show["details"]["parameter_size"].endswith(("M", "B"))
        assert show["model_info"]["general.parameter_count"] == info.parameters
        (tag,) = c.get("/api/tags").json()["models"]
        assert tag["details"]["quantization_level"] == level
        card = c.get("/v1/models/tiny").json()
        assert (card["dimensions"], card["max_model_len"]) == (model.dimensions, model.max_tokens)


def test_a_backend_that_knows_less_reports_unknown() -> None:
    with TestClient(create_app(HashEmbedder())) as c:
        assert c.get("/info").json()["model_dtype"] == "unknown"
        details = c.post("/api/show", json={}).json()["details"]
        assert details["quantization_level"] == "" and details["parameter_size"] == ""


def test_the_reported_width_is_the_served_one(tiny) -> None:  # type: ignore[no-untyped-def]
    """With ``--dimensions`` the cards that clients size their stores by say what a request
    gets, not the model's native width."""
    with TestClient(create_app(tiny, ServerConfig(served_name="tiny", default_dimensions=48))) as c:
        assert len(c.post("/v1/embeddings", json={"input": "fox"}).json()["data"][0]
                   ["embedding"]) == 48
        assert c.get("/v1/models/tiny").json()["dimensions"] == 48
        assert c.get("/v1/models").json()["data"][0]["dimensions"] == 48
        show = c.post("/api/show", json={"model": "tiny"}).json()
        assert show["model_info"]["qwen3.embedding_length"] == 48


def test_the_model_string_served_is_a_name_clients_may_send(tiny_dir: Path) -> None:
    """`smysl serve --model st:all-minilm-l6-v2`, then a client sending that same string:
    404 model_not_found (only the backend's own name, all-minilm-l6-v2, was known)."""
    minilm = smysl.load("st:all-minilm-l6-v2", device="cpu")
    tiny = smysl.load(str(tiny_dir), device="cpu")
    for model, names in ((minilm, ["st:all-minilm-l6-v2", "ST:all-MiniLM-L6-v2",
                                   "all-minilm-l6-v2"]),
                         (tiny, [str(tiny_dir), tiny_dir.name])):
        with TestClient(create_app(model, ServerConfig())) as c:
            for name in names:
                r = c.post("/v1/embeddings", json={"model": name, "input": "hello"})
                assert r.status_code == 200, (name, r.text)
            r = c.post("/v1/embeddings", json={"model": "gpt-4", "input": "hello"})
            assert r.status_code == 404
            # what the model is: a MiniLM was shown as a qwen3 in safetensors
            show = c.post("/api/show", json={}).json()
            arch = "bert" if model is minilm else "qwen3"
            assert show["details"]["family"] == show["model_info"]["general.architecture"] == arch
            assert show["model_info"][f"{arch}.embedding_length"] == model.dimensions
            assert c.get("/api/tags").json()["models"][0]["details"]["families"] == [arch]
    assert tiny.info().file_format == "safetensors" and minilm.info().file_format is None
