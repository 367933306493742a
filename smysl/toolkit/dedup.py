"""Near-duplicate detection: groups of texts whose cosine similarity reaches a threshold.

Blocking through an index instead of all pairs: every distinct vector is stored once and asks
the store for its ``neighbors`` nearest items; pairs at or above the threshold join groups
(union-find, so groups are transitive). An item whose neighbours are all still above the
threshold asks again with twice the width, up to ``max_neighbors``, so with exact search the
pairs equal the all-pairs reference, unless an item has more near-duplicates than that: such
items are counted (:attr:`DedupResult.capped`), since their pairs may then be missing. Exact
copies (the same text, the same vector) are set aside first: each is paired with its first
occurrence and costs no search.

Which items to keep is not "one per group": a chain of near-duplicates (a ~ b ~ c) can join
items that are far apart (a and c). Items are kept greedily in input order instead: an item is
dropped only as a duplicate of an earlier item that is kept (:attr:`DedupResult.duplicate_of`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder
from smysl.tokenize import InputTooLongError
from smysl.toolkit.classify import embed_for
from smysl.toolkit.store import StoreConfig, VectorStore, check_unit, finite_rows
from smysl.toolkit.stores import open_store

#: A pair scoring this little below the threshold still counts: float32 rounding (an exact
#: copy of a unit vector scores 0.99999994 against it, so ``threshold=1.0`` found none).
TOLERANCE = 1e-6


@dataclass(frozen=True)
class DedupConfig:
    """Deduplication settings.

    Attributes:
        threshold: Cosine similarity at which two texts count as near-duplicates (scores
            :data:`TOLERANCE` below it count too: float32 rounding).
        neighbors: Candidates fetched per item from the index at first (the blocking width).
        max_neighbors: Widest re-query for items whose candidates all pass the threshold; an
            item with more duplicates than this reports only its nearest ones as pairs.
        exact: Exact neighbour search (True; None means the same); False uses the store's
            approximate index (a LanceDB ``store``: measured slower than the exact default
            up to 100,000 items, see docs/toolkit.md).
        store: Where vectors are blocked; None: an exact store in memory (the vectors are in
            memory already; it holds a second copy).
        instruction: Instruction both sides are embedded with; None uses the ``dedup`` preset
            on instruction-aware models and none otherwise; ``""`` forces none.
        dimensions: Matryoshka size; None is the model's native size.
        truncate: Cut texts longer than the model takes (else an error names the first): two
            long texts that differ only after the cut would be duplicates.
        batch_size: Query vectors per search round trip.
    """

    threshold: float = 0.9
    neighbors: int = 10
    max_neighbors: int = 1024
    exact: bool | None = None
    store: StoreConfig | None = None
    instruction: str | None = None
    dimensions: int | None = None
    truncate: bool = False
    batch_size: int = 512

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [-1, 1], got {self.threshold}")
        if self.neighbors < 1:
            raise ValueError(f"neighbors must be >= 1, got {self.neighbors}")
        if self.max_neighbors < self.neighbors:
            raise ValueError(f"neighbors must be at most max_neighbors ({self.max_neighbors}), "
                             f"got {self.neighbors}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class DedupResult:
    """Pairs ``(i, j, score)`` with ``i < j``, groups of 2+ indices (connected by pairs), and
    which items to keep."""

    n: int
    threshold: float
    pairs: list[tuple[int, int, float]]
    groups: list[list[int]]
    #: Per item: -1 if kept, else the earlier kept item it is a near-duplicate of (its pair
    #: with the highest score). Empty: computed from ``pairs`` (:func:`keeping`).
    duplicate_of: list[int] = field(default_factory=list)
    #: All pairs of items at or above the threshold, where :attr:`pairs` lists fewer: a text
    #: given m times is listed with its first occurrence only (m - 1 pairs, not m(m - 1)/2,
    #: and its copies' near-duplicates through that first one). None: ``len(pairs)``.
    all_pairs: int | None = None
    #: Distinct texts with more near-duplicates than ``max_neighbors``: pairs of theirs may
    #: be missing (then :attr:`pairs`, groups and what is kept are not the all-pairs answer).
    capped: int = 0

    def __post_init__(self) -> None:
        if not self.duplicate_of:
            self.duplicate_of = keeping(self.n, self.pairs)

    @property
    def group_of(self) -> np.ndarray:
        """Group number per item (-1: unique)."""
        out = np.full(self.n, -1)
        for g, members in enumerate(self.groups):
            out[members] = g
        return out

    @property
    def keep(self) -> list[int]:
        """Items to keep, in input order: every item dropped is a near-duplicate of one kept
        (a group may keep several: its members need not all be alike)."""
        return [i for i, d in enumerate(self.duplicate_of) if d < 0]

    def report(self) -> dict[str, Any]:
        sizes = [len(g) for g in self.groups]
        kept = len(self.keep)
        listed = len(self.pairs)
        pairs = listed if self.all_pairs is None else self.all_pairs
        return {"items": self.n, "threshold": self.threshold, "pairs": pairs,
                **({"pairs_listed": listed} if listed != pairs else {}),
                "groups": len(self.groups), "duplicates": self.n - kept, "kept": kept,
                "largest_group": max(sizes, default=0),
                **({"capped": self.capped} if self.capped else {})}


def keeping(n: int, pairs: Sequence[tuple[int, int, float]]) -> list[int]:
    """Greedy in input order: item j is dropped, as a duplicate of the kept ``i < j`` it
    scores highest with, if it has one; else kept. -1 marks a kept item."""
    earlier: dict[int, list[tuple[float, int]]] = {}
    for i, j, score in pairs:
        earlier.setdefault(j, []).append((score, i))
    out = [-1] * n
    for j in sorted(earlier):
        out[j] = best_kept(earlier[j], out)
    return out


def best_kept(near: Sequence[tuple[float, int]], duplicate_of: Sequence[int],
              before: int | None = None) -> int:
    """Of ``near`` (score, item) pairs, the kept item (``duplicate_of[i] < 0``, earlier than
    ``before`` if given) scored highest, of equal scores the earliest; -1 if none."""
    kept = [(score, -i) for score, i in near
            if duplicate_of[i] < 0 and (before is None or i < before)]
    return -max(kept)[1] if kept else -1


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


def candidate_pairs(store: VectorStore, vectors: np.ndarray, config: DedupConfig,
                    exact: bool = True, capped: list[int] | None = None
                    ) -> Iterator[tuple[int, int, float]]:
    """Pairs ``i < j`` at or above the threshold among each item's index neighbours;
    ``capped`` is given the items still saturated at ``max_neighbors`` (their pairs beyond it
    are found only from the other item's side, if at all)."""
    seen: set[tuple[int, int]] = set()
    total = len(vectors)
    for s in range(0, total, config.batch_size):
        rows = list(range(s, min(s + config.batch_size, total)))
        width = config.neighbors + 1  # the item itself comes back too
        results: dict[int, list[Any]] = {}
        # the widest query: the item, max_neighbors, and one more that tells whether any lie
        # beyond them (without it a text with exactly max_neighbors was counted as capped)
        widest = config.max_neighbors + 2
        while rows:
            for i, hits in zip(rows, store.search(vectors[rows], width, exact=exact),
                               strict=True):
                results[i] = hits
            # saturated: every candidate passed, more may lie beyond the width
            rows = [i for i in rows if len(results[i]) == width and width < total
                    and results[i][-1].score >= config.threshold - TOLERANCE]
            if width >= widest:  # the widest asked for: said, not widened
                if capped is not None:
                    capped.extend(rows)
                rows = []
            width = min(width * 2, total, widest)
        for i in range(s, min(s + config.batch_size, total)):
            for h in results[i]:
                j = int(h.id)
                if j == i or h.score < config.threshold - TOLERANCE:
                    continue
                key = (min(i, j), max(i, j))
                if key not in seen:
                    seen.add(key)
                    yield key[0], key[1], h.score


def find_duplicates(vectors: np.ndarray, config: DedupConfig = DedupConfig()) -> DedupResult:
    """Near-duplicate groups among unit ``vectors`` ``[items, dimensions]`` (row i is item
    i)."""
    x = finite_rows(vectors)
    check_unit(x, " (cosine = dot product here: other rows would give other pairs)")
    rep_of = _first_copies(x)
    reps = np.flatnonzero(rep_of == np.arange(len(x)))
    capped: list[int] = []
    # pairs of positions in reps
    found = _search(x[reps], config, capped) if len(reps) > 1 else []
    pairs = [(int(reps[a]), int(reps[b]), score) for a, b, score in found]
    dup_rep = keeping(len(reps), found)
    duplicate_of = [-1] * len(x)
    for pos, item in enumerate(reps.tolist()):
        duplicate_of[item] = -1 if dup_rep[pos] < 0 else int(reps[dup_rep[pos]])
    copied = np.flatnonzero(rep_of != np.arange(len(x))).tolist()  # repeats of an earlier row
    # a copy of a dropped text: the kept item before it that text scores highest with (one
    # kept between the two is a candidate too); of a kept one, that first occurrence. Only
    # dropped texts with copies need their neighbours.
    dropped = {int(rep_of[i]) for i in copied if duplicate_of[int(rep_of[i])] >= 0}
    near: dict[int, list[tuple[float, int]]] = {r: [] for r in dropped}
    for a, b, score in pairs:
        if a in near:
            near[a].append((score, b))
        if b in near:
            near[b].append((score, a))
    copies = np.bincount(rep_of, minlength=len(x))  # per first occurrence, itself included
    all_pairs = (sum(int(copies[a]) * int(copies[b]) for a, b, _ in pairs)
                 + sum(int(c) * (int(c) - 1) // 2 for c in copies))
    for i in copied:
        r = int(rep_of[i])
        pairs.append((r, i, float(x[r] @ x[i])))  # at or above 1 - TOLERANCE: unit rows
        if duplicate_of[r] < 0:
            duplicate_of[i] = r
        else:  # r was dropped for a kept earlier neighbour: there is one
            duplicate_of[i] = best_kept(near[r], duplicate_of, before=i)
    pairs.sort()
    return DedupResult(len(x), config.threshold, pairs, _groups(len(x), pairs), duplicate_of,
                       all_pairs, len(capped))


def _first_copies(x: np.ndarray) -> np.ndarray:
    """Per row, the first row equal to it bit for bit (itself if none is earlier). Rows are
    keyed by a 128-bit digest, not their bytes (1M rows of 4,096 floats would be 16 GB of
    keys), and a digest match is confirmed by comparing the rows."""
    import hashlib

    first: dict[bytes, int] = {}
    out = np.arange(len(x), dtype=np.int64)
    for i, row in enumerate(x):
        at = first.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), i)
        if at != i and np.array_equal(x[at].view(np.uint32), row.view(np.uint32)):
            out[i] = at
    return out


def _search(x: np.ndarray, config: DedupConfig, capped: list[int]
            ) -> list[tuple[int, int, float]]:
    """Pairs ``(a, b, score)`` of rows of ``x`` (distinct rows) found through the store
    (``capped``: see :func:`candidate_pairs`)."""
    if config.store is not None:
        store: VectorStore = open_store(config.store, x.shape[1])
        chunk = 4096
    else:  # exact in memory: every row at once (the store grows by copying)
        store, chunk = open_store(StoreConfig(backend="memory"), x.shape[1]), len(x)
    try:
        if store.count():
            raise ValueError("the dedup store must start empty")
        for s in range(0, len(x), chunk):
            store.upsert([str(i) for i in range(s, min(s + chunk, len(x)))], x[s : s + chunk])
        exact = config.exact is not False
        if not exact:
            store.build_index()
        return sorted(candidate_pairs(store, x, config, exact, capped))
    finally:
        store.close()


def dedup_texts(embedder: BaseEmbedder, texts: Sequence[str],
                config: DedupConfig = DedupConfig(), progress: bool = False) -> DedupResult:
    """Embed ``texts`` (both sides alike; each distinct text once) and find near-duplicate
    groups."""
    distinct = list(dict.fromkeys(texts))
    at = {t: i for i, t in enumerate(distinct)}
    try:
        x = embed_for(embedder, distinct, config.instruction, config.dimensions,
                      preset="dedup", progress=progress, truncate=config.truncate)
    except InputTooLongError as e:  # named by its place in the caller's texts
        raise e.but(index=list(texts).index(distinct[e.index])) from None
    return find_duplicates(x[[at[t] for t in texts]] if len(texts) else x, config)
