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
    assert check_dimensions(1024, 1024) == 1024
    assert check_dimensions(None, 1024) == 1024
    assert check_dimensions(np.int64(64), 1024) == 64


def test_raw_rows_cut_to_fewer_dimensions_are_contiguous() -> None:
    """Callers serialise the rows (orjson refuses a strided view)."""
    raw = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = finish(raw, 2, normalize=False)
    assert out.flags.c_contiguous and np.array_equal(out, raw[:, :2])
