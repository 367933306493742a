import numpy as np
import pytest

from smysl.pooling import check_dimensions, finish, l2_normalize


def test_l2_normalize_rows_and_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    y = l2_normalize(x)
    assert np.allclose(y[0], [0.6, 0.8])
    assert np.array_equal(y[1], [0.0, 0.0])  # no NaN for a zero row
    assert y.dtype == np.float32


def test_matryoshka_truncates_then_renormalises() -> None:
    rng = np.random.default_rng(0)
    x = l2_normalize(rng.normal(size=(5, 128)))
    y = finish(x, 32)
    assert y.shape == (5, 32)
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-6)
    assert np.allclose(y, x[:, :32] / np.linalg.norm(x[:, :32], axis=1, keepdims=True), atol=1e-7)


@pytest.mark.parametrize("bad", [31, 0, -1, 1025, True, 64.0, "64"])
def test_dimensions_out_of_range_or_wrong_type(bad: object) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        check_dimensions(bad, 1024)  # type: ignore[arg-type]


def test_dimensions_bounds_are_inclusive() -> None:
    assert check_dimensions(32, 1024) == 32
    # a model without a Matryoshka range (all-MiniLM: 384 only) says so ("in 384..384" did)
    with pytest.raises(ValueError, match=r"^dimensions: this model's vectors have 384 "
                                         r"dimensions and no other size, got 256$"):
        check_dimensions(256, 384, minimum=384)
    assert check_dimensions(1024, 1024) == 1024
    assert check_dimensions(None, 1024) == 1024
    assert check_dimensions(np.int64(64), 1024) == 64


def test_raw_rows_cut_to_fewer_dimensions_are_contiguous() -> None:
    """Callers serialise the rows (orjson refuses a strided view)."""
    raw = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = finish(raw, 2, normalize=False)
    assert out.flags.c_contiguous and np.array_equal(out, raw[:, :2])


def test_a_non_finite_row_is_an_error_naming_it() -> None:
    """A NaN/inf row (float16 overflowing) was normalised into an all-zero "unit" vector."""
    from smysl.pooling import NonFiniteError

    raw = np.ones((3, 40), np.float32)
    raw[1, 5] = np.inf
    for normalize in (True, False):
        with pytest.raises(NonFiniteError, match="input 1: the model computed non-finite"):
            finish(raw, 32, normalize=normalize)
    raw[1, 5] = np.nan
    with pytest.raises(NonFiniteError) as e:
        finish(raw, 40)
    assert e.value.index == 1


def test_float16_overflow_is_reported_not_zeroed(tiny_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint whose first MLP pushes activations past float16's 65,504: the engine's
    float16 rows are NaN; embed returned all-zero vectors for them (cosine 0 to the
    reference, into an index without a word). Now an error naming the input, in Python and
    on the server (a 5xx for that request alone)."""
    import shutil

    import torch
    from fastapi.testclient import TestClient
    from safetensors.torch import load_file, save_file

    import smysl
    from smysl.pooling import NonFiniteError
    from smysl.server import create_app

    loud = tmp_path / "loud"
    shutil.copytree(tiny_dir, loud)
    weights = load_file(loud / "model.safetensors")
    key = next(k for k in weights if "layers.0.mlp.down_proj" in k)
    weights[key] = weights[key] * 200_000.0
    save_file(weights, loud / "model.safetensors", metadata={"format": "pt"})
    fine = smysl.load(str(loud), device="cpu", dtype="float32")
    assert np.isfinite(fine.embed(["hello world"])).all()
    model = smysl.load(str(loud), device="cpu", dtype="float16")
    assert not torch.isfinite(torch.from_numpy(
        model.embed_formatted(["hello world"], truncate=False))).all()
    with pytest.raises(NonFiniteError, match="input 0"):
        model.embed(["hello world"])
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        r = c.post("/v1/embeddings", json={"input": ["hello world"]})
        assert r.status_code >= 500 and "non-finite" in r.text
        assert c.get("/health").status_code == 200
