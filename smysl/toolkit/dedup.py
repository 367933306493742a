"""Near-duplicate detection: groups of texts whose cosine similarity reaches a threshold.

Blocking through an index instead of all pairs: every vector is stored once and asks the store for
its ``neighbors`` nearest items; pairs at or above the threshold join groups (union-find, so groups
are transitive). An item whose neighbours are all still above the threshold asks again with twice
the width, up to ``max_neighbors``, so with exact search the pairs equal the all-pairs reference.
Cost is about n searches of k instead of n²/2 comparisons, and with an approximate index (LanceDB,
``exact=False``) each search is sub-linear.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder
from smysl.toolkit.classify import embed_for
from smysl.toolkit.store import StoreConfig, VectorStore
from smysl.toolkit.stores import open_store

#: Above this many items the default store is a temporary LanceDB table with an ANN index.
MEMORY_LIMIT = 20_000


@dataclass(frozen=True)
class DedupConfig:
    """Deduplication settings.

    Attributes:
        threshold: Cosine similarity at which two texts count as near-duplicates.
        neighbors: Candidates fetched per item from the index at first (the blocking width).
        max_neighbors: Widest re-query for items whose candidates all pass the threshold; an
            item with more duplicates than this reports only its nearest ones as pairs.
        exact: Exact neighbour search; False uses the store's approximate index; None is exact
            in memory and approximate in the large-input LanceDB default.
        store: Where vectors are blocked; None uses an in-memory exact store up to
            :data:`MEMORY_LIMIT` items, else a temporary LanceDB table with an ANN index.
        instruction: Instruction both sides are embedded with; None uses the ``dedup`` preset
            on instruction-aware models and none otherwise; ``""`` forces none.
        dimensions: Matryoshka size; None is the model's native size.
        batch_size: Query vectors per search round trip.
    """

    threshold: float = 0.9
    neighbors: int = 10
    max_neighbors: int = 1024
    exact: bool | None = None
    store: StoreConfig | None = None
    instruction: str | None = None
    dimensions: int | None = None
    batch_size: int = 512

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [-1, 1], got {self.threshold}")
        if self.neighbors < 1:
            raise ValueError(f"neighbors must be >= 1, got {self.neighbors}")


@dataclass
class DedupResult:
    """Pairs ``(i, j, score)`` with ``i < j``, groups of 2+ indices, and which items to keep."""

    n: int
    threshold: float
    pairs: list[tuple[int, int, float]]
    groups: list[list[int]]

    @property
    def group_of(self) -> np.ndarray:
        """Group number per item (-1: unique)."""
        out = np.full(self.n, -1)
        for g, members in enumerate(self.groups):
            out[members] = g
        return out

    @property
    def keep(self) -> list[int]:
        """Unique items and the first member of each group, in input order."""
        drop = {i for g in self.groups for i in g[1:]}
        return [i for i in range(self.n) if i not in drop]

    def report(self) -> dict[str, Any]:
        sizes = [len(g) for g in self.groups]
        return {"items": self.n, "threshold": self.threshold, "pairs": len(self.pairs),
                "groups": len(self.groups), "duplicates": sum(sizes) - len(sizes),
                "kept": self.n - (sum(sizes) - len(sizes)),
                "largest_group": max(sizes, default=0)}


def _groups(n: int, pairs: Sequence[tuple[int, int, float]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def _open(config: DedupConfig, n: int, dims: int) -> tuple[VectorStore, Any]:
    if config.store is not None:
        return open_store(config.store, dims), None
    if n <= MEMORY_LIMIT:
        return open_store(StoreConfig(backend="memory"), dims), None
    tmp = tempfile.TemporaryDirectory(prefix="smysl-dedup-")
    return open_store(StoreConfig(uri=tmp.name, table="dedup"), dims), tmp


def candidate_pairs(store: VectorStore, vectors: np.ndarray, config: DedupConfig,
                    exact: bool = True) -> Iterator[tuple[int, int, float]]:
    """Pairs ``i < j`` at or above the threshold among each item's index neighbours."""
    seen: set[tuple[int, int]] = set()
    total = len(vectors)
    for s in range(0, total, config.batch_size):
        rows = list(range(s, min(s + config.batch_size, total)))
        width = config.neighbors + 1  # the item itself comes back too
        results: dict[int, list[Any]] = {}
        while rows:
            for i, hits in zip(rows, store.search(vectors[rows], width, exact=exact),
                               strict=True):
                results[i] = hits
            # saturated: every candidate passed, more may lie beyond the width
            rows = [i for i in rows if len(results[i]) == width and width < total
                    and results[i][-1].score >= config.threshold
                    and width <= config.max_neighbors]
            width = min(width * 2, total, config.max_neighbors + 1)
        for i in range(s, min(s + config.batch_size, total)):
            for h in results[i]:
                j = int(h.id)
                if j == i or h.score < config.threshold:
                    continue
                key = (min(i, j), max(i, j))
                if key not in seen:
                    seen.add(key)
                    yield key[0], key[1], h.score


def find_duplicates(vectors: np.ndarray, config: DedupConfig = DedupConfig()) -> DedupResult:
    """Near-duplicate groups among unit ``vectors`` (row i is item i)."""
    x = np.asarray(vectors, np.float32)
    store, tmp = _open(config, len(x), x.shape[1])
    try:
        if store.count():
            raise ValueError("the dedup store must start empty")
        for s in range(0, len(x), 4096):
            store.upsert([str(i) for i in range(s, min(s + 4096, len(x)))], x[s : s + 4096])
        exact = config.exact if config.exact is not None else tmp is None
        if not exact:
            store.build_index()
        pairs = sorted(candidate_pairs(store, x, config, exact))
    finally:
        store.close()
        if tmp is not None:
            tmp.cleanup()
    return DedupResult(len(x), config.threshold, pairs, _groups(len(x), pairs))


def dedup_texts(embedder: BaseEmbedder, texts: Sequence[str],
                config: DedupConfig = DedupConfig(), progress: bool = False) -> DedupResult:
    """Embed ``texts`` (both sides alike) and find near-duplicate groups."""
    x = embed_for(embedder, texts, config.instruction, config.dimensions, preset="dedup",
                  progress=progress)
    return find_duplicates(x, config)
