"""Shared prefixes (issue 15): sequences that begin alike compute their common head once, and
each row equals the whole-sequence row (fp32 within float error) and never depends on the
batch it came in (bit for bit)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


def _batch(seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Two families (heads of 7 and 11 tokens), equal and unequal tails, two without heads."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(1, 1000, 7).tolist(), rng.integers(1, 1000, 11).tolist()
    seqs = [a + rng.integers(1, 1000, n).tolist() for n in (5, 9, 5, 1)]
    seqs += [b + rng.integers(1, 1000, n).tolist() for n in (3, 20)]
    seqs += [rng.integers(1, 1000, n).tolist() for n in (6, 13)]
    heads = [7, 7, 7, 7, 11, 11, 0, 0]
    return seqs, heads


@pytest.fixture(scope="module")
def engine(tiny: Any) -> Any:
    return tiny.engine


def test_shared_heads_give_the_whole_sequence_rows(engine: Any) -> None:
    seqs, heads = _batch()
    whole = engine.forward(seqs)
    shared = engine.forward(seqs, heads)
    assert shared.shape == whole.shape
    scale = np.abs(whole).max()
    assert np.abs(shared - whole).max() <= 1e-5 * scale
    # a head as long as its sequence is not shared; a head of 0 is no head
    same = engine.forward([seqs[0][:7], seqs[6]], [7, 0])
    np.testing.assert_array_equal(same, engine.forward([seqs[0][:7], seqs[6]]))


@pytest.fixture(scope="module")
def bf16_engine(tiny_dir: Any) -> Any:
    """bf16 on CPU: attention as blocked GEMMs where oneDNN computes bf16 natively (the path
    ``dtype="auto"`` takes there), the continuations with a prefix ``offset``."""
    from smysl import Embedder

    return Embedder.load(str(tiny_dir), device="cpu", dtype="bfloat16").engine


@pytest.mark.parametrize("which", ["float32", "bfloat16"])
def test_a_row_never_depends_on_its_batch(which: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue("engine" if which == "float32" else "bf16_engine")
    seqs, heads = _batch()
    full = engine.forward(seqs, heads)
    for i in range(len(seqs)):
        alone = engine.forward([seqs[i]], [heads[i]])
        np.testing.assert_array_equal(alone[0], full[i])
    # reordered, and with strangers of another family
    order = [5, 2, 7, 0, 4, 6, 1, 3]
    shuffled = engine.forward([seqs[i] for i in order], [heads[i] for i in order])
    np.testing.assert_array_equal(shuffled, full[order])
    other, other_heads = _batch(seed=1)
    mixed = engine.forward(seqs[:3] + other, heads[:3] + other_heads)
    np.testing.assert_array_equal(mixed[:3], full[:3])


def test_heads_must_match_the_batch(engine: Any) -> None:
    with pytest.raises(ValueError, match="one head length per sequence"):
        engine.forward([[1, 2, 3]], [1, 1])
