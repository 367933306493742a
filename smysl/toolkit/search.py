"""Search and RAG retrieval over a store: top-k with scores and payloads, filters, optional MMR."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smysl.toolkit.store import Hit, VectorStore, Where


@dataclass(frozen=True)
class SearchConfig:
    """How a query is answered.

    Attributes:
        k: Hits per query.
        instruction: Query instruction (a task or preset name); None uses the model's default task
            when the model takes instructions; ``""`` embeds queries bare.
        where: Payload filter (see :mod:`smysl.toolkit.store`), applied before ranking.
        exact: Brute-force scan (True) or the store's approximate index when it has one.
        mmr: Re-rank ``fetch_k`` candidates by maximal marginal relevance for diverse results.
        mmr_lambda: MMR trade-off: 1 is pure relevance, 0 pure diversity.
        fetch_k: Candidates MMR chooses from.
    """

    k: int = 10
    instruction: str | None = None
    where: Where | None = None
    exact: bool = True
    mmr: bool = False
    mmr_lambda: float = 0.5
    fetch_k: int = 50

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")


def search_vectors(store: VectorStore, queries: np.ndarray, config: SearchConfig,
                   check: Callable[[Hit], bool] | None = None) -> list[list[Hit]]:
    """Top-k hits per query vector; with MMR, ``k`` diverse hits out of ``fetch_k``.

    ``check`` (given the hit with its vector) rejects hits that must not be served, e.g. a
    damaged stored vector; the search then widens until each query has its ``k`` good hits or
    the store has no more.
    """
    want = max(config.fetch_k, config.k) if config.mmr else config.k
    pool = _checked_search(store, queries, want, config, check)
    if not config.mmr:
        return [[Hit(h.id, h.score, h.payload) for h in hits] for hits in pool]
    q = np.atleast_2d(np.asarray(queries, np.float32))
    return [mmr(q[i], hits, config.k, config.mmr_lambda) for i, hits in enumerate(pool)]


def _checked_search(store: VectorStore, queries: np.ndarray, want: int, config: SearchConfig,
                    check: Callable[[Hit], bool] | None) -> list[list[Hit]]:
    k = want
    while True:
        raw = store.search(queries, k, where=config.where, exact=config.exact,
                           with_vectors=check is not None or config.mmr)
        if check is None:
            return raw
        good = [[h for h in hits if check(h)] for hits in raw]
        # A query that lost hits while the store had k to give may have more good ones.
        short = [len(g) < want and len(r) == k for g, r in zip(good, raw, strict=True)]
        if not any(short):
            return [g[:want] for g in good]
        k += max(len(r) - len(g) for g, r in zip(good, raw, strict=True))


def mmr(query: np.ndarray, hits: Sequence[Hit], k: int, lam: float = 0.5) -> list[Hit]:
    """Greedy maximal marginal relevance: ``lam * sim(q, d) - (1 - lam) * max sim(d, chosen)``.

    Hits keep their relevance score; only the order and selection change.
    """
    if not hits:
        return []
    if any(h.vector is None for h in hits):
        raise ValueError("MMR needs hit vectors (search with with_vectors=True)")
    vecs = np.stack([np.asarray(h.vector, np.float32) for h in hits])
    rel = vecs @ np.asarray(query, np.float32)
    sim = vecs @ vecs.T
    chosen: list[int] = []
    left = list(range(len(hits)))
    redundancy = np.full(len(hits), -np.inf)
    while left and len(chosen) < k:
        red = np.where(np.isfinite(redundancy), redundancy, 0.0)
        gain = lam * rel[left] - (1 - lam) * red[left]
        best = left[int(np.argmax(gain))]
        chosen.append(best)
        left.remove(best)
        redundancy = np.maximum(redundancy, sim[best])
    return [Hit(hits[i].id, hits[i].score, hits[i].payload) for i in chosen]


def hits_to_rows(queries: Sequence[str], results: Sequence[Sequence[Hit]]) -> list[dict[str, Any]]:
    """Flat JSON-ready rows: query, rank, id, score and the payload."""
    return [{"query": q, "rank": r, "id": h.id, "score": round(h.score, 6), **h.payload}
            for q, hits in zip(queries, results, strict=True) for r, h in enumerate(hits, 1)]


def format_json(queries: Sequence[str], results: Sequence[Sequence[Hit]]) -> str:
    """One JSON object per query: ``{"query", "hits": [{"id", "score", "payload"}]}`` per line."""
    return "\n".join(json.dumps({"query": q, "hits": [
        {"id": h.id, "score": round(h.score, 6), "payload": h.payload} for h in hits]},
        ensure_ascii=False) for q, hits in zip(queries, results, strict=True))


def format_table(queries: Sequence[str], results: Sequence[Sequence[Hit]],
                 width: int = 100) -> str:
    """A readable table per query: rank, score, id and a one-line snippet of the text."""
    lines = []
    for q, hits in zip(queries, results, strict=True):
        lines.append(f"query: {q}")
        lines.append(f"{'#':>3}  {'score':>7}  {'id':<28}  text")
        for r, h in enumerate(hits, 1):
            text = " ".join(str(h.payload.get("text", "")).split())
            snippet = text if len(text) <= width else text[: width - 1] + "…"
            lines.append(f"{r:>3}  {h.score:7.4f}  {h.id[:28]:<28}  {snippet}")
        if not hits:
            lines.append("  (no results)")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def build_context(hits: Sequence[Hit], max_chars: int = 8000) -> str:
    """RAG context: numbered chunk texts with their document ids, best first, within a budget."""
    parts: list[str] = []
    used = 0
    for n, h in enumerate(hits, 1):
        text = str(h.payload.get("text", ""))
        block = f"[{n}] {h.payload.get('doc_id', h.id)}\n{text}"
        if parts and used + len(block) > max_chars:
            break
        parts.append(block[:max_chars])
        used += len(block) + 2
    return "\n\n".join(parts)
