"""An exact in-process store on numpy: for tests, small jobs and temporary dedup indexes."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from smysl.toolkit import lexical
from smysl.toolkit.store import (
    Hit,
    Record,
    VectorStore,
    Where,
    bound,
    matches,
    merged_meta,
    parse_where,
    record_ids,
    text_queries,
)


class MemoryStore(VectorStore):
    """Brute-force search over a dense matrix; nothing persists."""

    def __init__(self, dimensions: int) -> None:
        if dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {dimensions}")
        self.dimensions = dimensions
        self._rows: dict[str, int] = {}
        self._ids: list[str] = []
        self._payloads: list[dict[str, Any]] = []
        # word search: term -> {row: times in the row}, each row's terms (to take them back
        # out when it is rewritten) and its number of terms
        self._postings: dict[str, dict[int, int]] = {}
        self._tf: list[Counter[str]] = []
        self._lengths = np.zeros(0, dtype=np.int64)
        self._matrix = np.zeros((0, dimensions), dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self._meta: dict[str, Any] = {}

    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]] | None = None) -> None:
        ids, vecs, pays = self._check_upsert(ids, vectors, payloads)
        new = [i for i in ids if i not in self._rows]
        if new:
            start = len(self._ids)
            self._matrix = np.vstack([self._matrix,
                                      np.zeros((len(new), self.dimensions), np.float32)])
            self._alive = np.concatenate([self._alive, np.zeros(len(new), bool)])
            self._lengths = np.concatenate([self._lengths, np.zeros(len(new), np.int64)])
            for n, i in enumerate(new):
                self._rows[i] = start + n
                self._ids.append(i)
                self._payloads.append({})
                self._tf.append(Counter())
        for i, v, p in zip(ids, vecs, pays, strict=True):
            row = self._rows[i]
            self._matrix[row] = v
            self._payloads[row] = copy.deepcopy(p)
            self._drop_terms(row)
            terms = lexical.record_terms(p.get("text"))
            self._tf[row] = tf = Counter(terms)
            for term, n in tf.items():
                self._postings.setdefault(term, {})[row] = n
            self._lengths[row] = len(terms)
            self._alive[row] = True

    def _drop_terms(self, row: int) -> None:
        """Take a row's terms out of the postings (it is rewritten or deleted)."""
        for term in self._tf[row]:
            post = self._postings[term]
            del post[row]
            if not post:
                del self._postings[term]
        self._tf[row] = Counter()
        self._lengths[row] = 0

    def _mask(self, where: Where | None) -> np.ndarray:
        conds = parse_where(where)
        mask = self._alive.copy()
        if conds:
            for row in np.flatnonzero(mask):
                mask[row] = matches(self._payloads[row], conds)
        return mask

    def search(self, vectors: np.ndarray, k: int = 10, *, where: Where | None = None,
               exact: bool = True, with_vectors: bool = False) -> list[list[Hit]]:
        q = self._queries(vectors, k)
        mask = self._mask(where)
        rows = np.flatnonzero(mask)
        # every row alive and kept: the matrix itself, not a copy of it
        matrix = self._matrix if len(rows) == len(mask) else self._matrix[rows]
        scores = q @ matrix.T if len(rows) else np.zeros((len(q), 0), np.float32)
        out = []
        for s in scores:
            order = _top(s, k)
            out.append([Hit(self._ids[rows[j]], float(s[j]),
                            copy.deepcopy(self._payloads[rows[j]]),
                            self._matrix[rows[j]].copy() if with_vectors else None)
                        for j in order])
        return out

    def search_text(self, queries: Sequence[Sequence[str]], k: int = 10, *,
                    where: Where | None = None, with_vectors: bool = False
                    ) -> list[list[Hit]]:
        queries = text_queries(queries, k)
        # BM25 with the statistics of every record with terms, whatever the filter (as
        # LanceDB, PostgreSQL and Qdrant count them: a hit's score does not depend on what
        # else the filter leaves); only the rows holding a query term are scored (the
        # postings), those the filter leaves
        counted = self._alive & (self._lengths > 0)
        docs = int(counted.sum())
        avg = float(self._lengths[counted].mean()) if docs else 0.0
        mask = self._mask(where) & counted
        out = []
        for terms in queries:
            scores = np.zeros(len(self._ids), np.float64)
            for term in dict.fromkeys(terms):
                post = self._postings.get(term)
                if not post or not docs:
                    continue
                rows = np.fromiter(post.keys(), np.int64, len(post))
                tf = np.fromiter(post.values(), np.float64, len(post))
                keep = mask[rows]
                if keep.any():
                    scores[rows[keep]] += lexical.idf(len(rows), docs) * lexical.tf_weight(
                        tf[keep], self._lengths[rows[keep]], avg)
            found = np.flatnonzero(scores > 0)  # ties: the earlier row first
            order = found[np.argsort(-scores[found], kind="stable")[:k]]
            out.append([Hit(self._ids[r], float(scores[r]), copy.deepcopy(self._payloads[r]),
                            self._matrix[r].copy() if with_vectors else None)
                        for r in order])
        return out

    def get(self, ids: Sequence[str]) -> list[Record]:
        out = []
        for i in record_ids(ids):
            row = self._rows.get(i)
            if row is not None and self._alive[row]:
                out.append(Record(self._ids[row], self._matrix[row].copy(),
                                  copy.deepcopy(self._payloads[row])))
        return out

    def delete(self, ids: Sequence[str] | None = None, *, where: Where | None = None) -> int:
        if ids is None and not where:
            raise ValueError("delete needs ids or a filter")
        mask = self._mask(where)
        if ids is not None:
            chosen = np.zeros_like(mask)
            for i in record_ids(ids):
                row = self._rows.get(i)
                if row is not None:
                    chosen[row] = True
            mask &= chosen
        self._alive[mask] = False
        for gone in np.flatnonzero(mask).tolist():
            self._drop_terms(gone)
        return int(mask.sum())

    def count(self, where: Where | None = None) -> int:
        return int(self._mask(where).sum())

    def scan(self, batch_size: int = 2048, *, where: Where | None = None,
             with_vectors: bool = True) -> Iterator[list[Record]]:
        rows = np.flatnonzero(self._mask(where))
        empty = np.zeros(0, np.float32)
        for s in range(0, len(rows), batch_size):
            yield [Record(self._ids[r], self._matrix[r].copy() if with_vectors else empty,
                          copy.deepcopy(self._payloads[r])) for r in rows[s : s + batch_size]]

    def read_meta(self) -> dict[str, Any]:
        return dict(self._meta)

    def claim_meta(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        if not bound(self._meta):
            self._meta = {**self._meta, **meta}
        return dict(self._meta)

    def update_meta(self, changes: Mapping[str, Any]) -> None:
        # one process, and the dict is replaced whole: a reader sees the old or the new one
        self._meta = merged_meta(self._meta, changes)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores``, highest first, ties in position order: what
    a stable sort of all of them gives, without sorting them all (a dedup asks each of
    100,000 rows for its 11 nearest: the full sort was most of its time)."""
    n = len(scores)
    if k >= n:
        return np.argsort(-scores, kind="stable")
    kth = np.partition(scores, n - k)[n - k]  # the k-th highest value
    if np.isnan(kth):  # NaN sorts last; let the full sort place it
        return np.argsort(-scores, kind="stable")[:k]
    tied = np.flatnonzero(scores >= kth)  # all of the k best, with every tie of the k-th
    return tied[np.argsort(-scores[tied], kind="stable")[:k]]
