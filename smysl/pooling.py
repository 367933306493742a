"""Post-processing of pooled vectors: L2 normalisation and Matryoshka truncation."""

from __future__ import annotations

import numpy as np

#: Smallest Matryoshka dimension Qwen3-Embedding was trained for.
MIN_DIMENSIONS = 32


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; an all-zero row stays zero instead of NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def check_dimensions(dimensions: int | None, native: int, *, minimum: int = MIN_DIMENSIONS) -> int:
    """Validate a requested output size; ``None`` means the model's native size."""
    if dimensions is None:
        return native
    if isinstance(dimensions, bool) or not isinstance(dimensions, int | np.integer):
        raise ValueError(f"dimensions must be an integer, got {dimensions!r}")
    lo = min(minimum, native)
    if not lo <= int(dimensions) <= native:
        if lo == native:  # no Matryoshka range: "in 384..384" read oddly
            raise ValueError(f"dimensions: this model's vectors have {native} dimensions and "
                             f"no other size, got {dimensions}")
        raise ValueError(f"dimensions must be in {lo}..{native} for this model, got {dimensions}")
    return int(dimensions)


class NonFiniteError(RuntimeError):
    """The model computed NaN or inf for input ``index`` (float16 overflowing: weights with
    NaN or inf are refused at load): such a row is never returned (normalised, it was an
    all-zero "vector")."""

    def __init__(self, index: int) -> None:
        self.index = index
        super().__init__(
            f"input {index}: the model computed non-finite values (NaN or inf) for it, so it "
            "has no vector; float16 overflows where activations pass 65,504: load the model "
            "in bfloat16 or float32")


def finish(raw: np.ndarray, dimensions: int, *, normalize: bool = True) -> np.ndarray:
    """The one post-processing of pooled rows ``raw [n, native]`` -> ``[n, dimensions]``.

    Matryoshka: keep the first ``dimensions`` components, then L2-normalise (all of it at the
    native size). ``normalize=False`` (TEI's option) keeps the raw components. A row with NaN
    or inf raises :class:`NonFiniteError` naming it.
    """
    x = np.asarray(raw, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise NonFiniteError(int(np.flatnonzero(~finite)[0]))
    if dimensions != x.shape[1]:
        x = x[:, :dimensions]
    # a column slice is a strided view; callers serialise rows (orjson refuses strided arrays)
    return l2_normalize(x) if normalize else np.ascontiguousarray(x)
