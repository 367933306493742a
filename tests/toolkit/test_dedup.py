"""Deduplication: blocking through the index finds exactly the all-pairs duplicates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from smysl.toolkit.dedup import DedupConfig, dedup_texts, find_duplicates
from smysl.toolkit.store import StoreConfig
from toolkit.helpers import unit_rows


def planted(n: int = 600, dims: int = 32, seed: int = 0) -> np.ndarray:
    """Random vectors plus near-copies (pairs and a few triples)."""
    rng = np.random.default_rng(seed)
    base = unit_rows(n, dims, seed=seed)
    copies = base[rng.choice(n, n // 5, replace=False)] + rng.normal(0, 0.08, (n // 5, dims))
    x = np.vstack([base, copies, copies[:10] + rng.normal(0, 0.05, (10, dims))])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def all_pairs(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    s = x @ x.T
    return {(i, j) for i, j in itertools.combinations(range(len(x)), 2) if s[i, j] >= threshold}


@pytest.mark.parametrize("backend", ["memory", "lancedb"])
def test_blocking_finds_all_pairs_reference(backend, tmp_path) -> None:
    x = planted()
    store = None
    if backend == "lancedb":
        pytest.importorskip("lancedb")
        store = StoreConfig(uri=str(tmp_path / "db"), table="d")
    res = find_duplicates(x, DedupConfig(threshold=0.9, neighbors=5, store=store))
    ref = all_pairs(x, 0.9)
    assert len(ref) > 100
    assert {(i, j) for i, j, _ in res.pairs} == ref
    # groups: connected components of the reference pairs
    groups = {frozenset(g) for g in res.groups}
    for i, j in ref:
        assert any(i in g and j in g for g in groups)
    rep = res.report()
    assert rep["duplicates"] == sum(len(g) - 1 for g in res.groups)
    assert rep["kept"] == len(res.keep) == len(x) - rep["duplicates"]
    assert res.group_of[res.groups[0][1]] == 0


def test_dense_groups_widen_the_blocking() -> None:
    """35 near-copies of one text with neighbors=3: re-queries still find all 595 pairs."""
    rng = np.random.default_rng(4)
    base = unit_rows(1, 16, seed=4)
    x = np.vstack([base + rng.normal(0, 0.02, (35, 16)), unit_rows(40, 16, seed=5)])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ref = all_pairs(x, 0.95)
    assert len(ref) == 35 * 34 // 2
    res = find_duplicates(x, DedupConfig(threshold=0.95, neighbors=3))
    assert {(i, j) for i, j, _ in res.pairs} == ref and res.groups == [list(range(35))]
    capped = find_duplicates(x, DedupConfig(threshold=0.95, neighbors=3, max_neighbors=8))
    assert len(capped.pairs) < len(ref) and capped.groups == [list(range(35))]


def test_approximate_blocking_recall(tmp_path) -> None:
    pytest.importorskip("lancedb")
    x = planted(n=1000, seed=1)
    ref = all_pairs(x, 0.9)
    res = find_duplicates(x, DedupConfig(threshold=0.9, neighbors=5, exact=False,
                                         store=StoreConfig(uri=str(tmp_path / "db"))))
    found = {(i, j) for i, j, _ in res.pairs}
    assert found <= ref and len(found) / len(ref) >= 0.98


def test_dedup_texts_with_minilm(minilm) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.",
             "Stock markets fell sharply today.", "The cat sat on the mat!",
             "Share prices dropped steeply today.", "I like green tea."]
    strict = dedup_texts(minilm, texts, DedupConfig(threshold=0.8))
    assert strict.groups == [[0, 1, 3]] and strict.keep == [0, 2, 4, 5]
    loose = dedup_texts(minilm, texts, DedupConfig(threshold=0.6))
    assert loose.groups == [[0, 1, 3], [2, 4]]  # the paraphrase about markets joins
