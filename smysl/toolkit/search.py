"""Search and RAG retrieval over a store: top-k with scores and payloads, filters, optional MMR,
optional reranking of the top candidates by a :class:`~smysl.rerank.BaseReranker`.

Reranking is two-stage: the store returns the ``rerank_top`` nearest chunks (filters and the
damaged-vector check apply there), the reranker scores each (query, chunk text) pair, and the best
``k`` by that score come back as :class:`RerankedHit` (``score``: the reranker's,
``vector_score``: the cosine of the first stage). This module imports no reranker code: a local
reranker brings torch only when the caller loads one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from smysl.toolkit.store import Hit, VectorStore, Where

if TYPE_CHECKING:
    from smysl.rerank import BaseReranker

#: Why MMR and reranking do not combine (both choose the final k out of the candidates).
MMR_AND_RERANK = ("MMR and reranking both choose the final hits out of the candidates, by "
                  "different scores: use one of them (--mmr / SearchConfig(mmr=True), or "
                  "--rerank / reranker=)")


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
        rerank_top: With a reranker: candidates the vector search fetches and the reranker
            scores (``max(rerank_top, k)`` of them); the best ``k`` are returned.
        rerank_instruction: With a reranker: its instruction (Qwen3-Reranker's
            ``<Instruct>`` line); None is the reranker's default.
        rerank_truncate: With a reranker: cut chunks that exceed its token limit (True) or
            fail on them.
    """

    k: int = 10
    instruction: str | None = None
    where: Where | None = None
    exact: bool = True
    mmr: bool = False
    mmr_lambda: float = 0.5
    fetch_k: int = 50
    rerank_top: int = 50
    rerank_instruction: str | None = None
    rerank_truncate: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if isinstance(self.rerank_top, bool) or not isinstance(self.rerank_top, int) \
                or self.rerank_top < 1:
            raise ValueError(f"rerank_top must be an integer >= 1, got {self.rerank_top!r}")


@dataclass(frozen=True)
class RerankedHit(Hit):
    """A hit reordered by a reranker: ``score`` is the reranker's relevance score (higher is
    more relevant; Qwen3-Reranker: P("yes") in [0, 1]), ``vector_score`` the cosine the vector
    search gave it and ``vector_rank`` its place there (1 = nearest)."""

    vector_score: float = float("nan")
    vector_rank: int = 0


def search_vectors(store: VectorStore, queries: np.ndarray, config: SearchConfig,
                   check: Callable[[Hit], bool] | None = None, *,
                   reranker: BaseReranker | None = None,
                   texts: Sequence[str] | None = None) -> list[list[Hit]]:
    """Top-k hits per query vector; with MMR, ``k`` diverse hits out of ``fetch_k``; with a
    ``reranker``, the best ``k`` by its score out of ``max(rerank_top, k)`` nearest
    (:class:`RerankedHit`; ``texts``, the query texts in the order of ``queries``, are what it
    reads). MMR and a reranker together are refused (``ValueError``).

    ``check`` (given the hit with its vector) rejects hits that must not be served, e.g. a
    damaged stored vector; the search then widens until each query has its good candidates or
    the store has no more.
    """
    if reranker is not None:
        if config.mmr:
            raise ValueError(MMR_AND_RERANK)
        if texts is None or isinstance(texts, str) or len(texts) != len(
                np.atleast_2d(queries)):
            raise ValueError("reranking needs the query texts, one per query vector")
        pool = _checked_search(store, queries, candidates(config, reranking=True), config,
                               check)
        out: list[list[Hit]] = []
        for text, hits in zip(texts, pool, strict=True):
            best: list[Hit] = list(rerank_hits(reranker, text, hits, k=config.k,
                                               instruction=config.rerank_instruction,
                                               truncate=config.rerank_truncate))
            out.append(best)
        return out
    want = candidates(config, reranking=False)
    pool = _checked_search(store, queries, want, config, check)
    if not config.mmr:
        return [[Hit(h.id, h.score, h.payload) for h in hits] for hits in pool]
    q = np.atleast_2d(np.asarray(queries, np.float32))
    return [mmr(q[i], hits, config.k, config.mmr_lambda) for i, hits in enumerate(pool)]


def candidates(config: SearchConfig, *, reranking: bool) -> int:
    """How many nearest hits the vector search fetches per query: ``max(rerank_top, k)`` when
    reranking, ``max(fetch_k, k)`` with MMR, else ``k``."""
    if reranking:
        if config.mmr:
            raise ValueError(MMR_AND_RERANK)
        return max(config.rerank_top, config.k)
    return max(config.fetch_k, config.k) if config.mmr else config.k


def rerank_hits(reranker: BaseReranker, query: str, hits: Sequence[Hit], *,
                k: int | None = None, instruction: str | None = None,
                truncate: bool = True) -> list[RerankedHit]:
    """Reorder one query's vector-search ``hits`` by ``reranker`` on their chunk texts
    (``payload["text"]``): the best ``k`` (all when None), best first, ties in vector order.
    Every hit is scored in one :meth:`~smysl.rerank.BaseReranker.rerank` call."""
    if not hits:
        return []
    texts = []
    for h in hits:
        text = h.payload.get("text")
        if not isinstance(text, str):
            raise ValueError(f"hit {h.id!r} has no text in its payload to rerank")
        texts.append(text)
    ranked = reranker.rerank(query, texts, instruction=instruction, top_n=k, truncate=truncate)
    return reorder_hits(hits, ranked)


def reorder_hits(hits: Sequence[Hit], ranked: Sequence[tuple[int, float]]
                 ) -> list[RerankedHit]:
    """:class:`RerankedHit` of ``hits`` in the order of a reranker's ``(index, score)`` list
    (what :meth:`~smysl.rerank.BaseReranker.rerank` returns for the hits' texts), for callers
    that run the reranker themselves (e.g. through a server's batcher)."""
    out = []
    for i, score in ranked:
        h = hits[i]
        out.append(RerankedHit(h.id, float(score), h.payload, vector_score=float(h.score),
                               vector_rank=i + 1))
    return out


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


def _scores(h: Hit) -> dict[str, Any]:
    """``score`` (and, for a reranked hit, ``vector_score`` and ``vector_rank``) of a hit."""
    out: dict[str, Any] = {"score": round(h.score, 6)}
    if isinstance(h, RerankedHit):
        out.update(vector_score=round(h.vector_score, 6), vector_rank=h.vector_rank)
    return out


def hits_to_rows(queries: Sequence[str], results: Sequence[Sequence[Hit]]) -> list[dict[str, Any]]:
    """Flat JSON-ready rows: query, rank, id, score (reranked hits: also ``vector_score`` and
    ``vector_rank``) and the payload."""
    return [{"query": q, "rank": r, "id": h.id, **_scores(h), **h.payload}
            for q, hits in zip(queries, results, strict=True) for r, h in enumerate(hits, 1)]


def format_json(queries: Sequence[str], results: Sequence[Sequence[Hit]]) -> str:
    """One JSON object per query: ``{"query", "hits": [{"id", "score", "payload"}]}`` per line;
    reranked hits also carry ``vector_score`` and ``vector_rank``."""
    return "\n".join(json.dumps({"query": q, "hits": [
        {"id": h.id, **_scores(h), "payload": h.payload} for h in hits]},
        ensure_ascii=False) for q, hits in zip(queries, results, strict=True))


def format_table(queries: Sequence[str], results: Sequence[Sequence[Hit]],
                 width: int = 100) -> str:
    """A readable table per query: rank, score, id and a one-line snippet of the text.
    Reranked hits show the reranker's score (``rerank``), the vector search's cosine
    (``vector``) and their rank there (``was``)."""
    lines = []
    for q, hits in zip(queries, results, strict=True):
        reranked = any(isinstance(h, RerankedHit) for h in hits)
        lines.append(f"query: {q}")
        lines.append(f"{'#':>3}  {'rerank':>7}  {'vector':>7}  {'was':>4}  {'id':<28}  text"
                     if reranked else f"{'#':>3}  {'score':>7}  {'id':<28}  text")
        for r, h in enumerate(hits, 1):
            text = " ".join(str(h.payload.get("text", "")).split())
            snippet = text if len(text) <= width else text[: width - 1] + "…"
            scores = f"{h.score:7.4f}"
            if reranked:
                scores += (f"  {h.vector_score:7.4f}  {h.vector_rank:>4}"
                           if isinstance(h, RerankedHit) else f"  {'':7}  {'':>4}")
            lines.append(f"{r:>3}  {scores}  {h.id[:28]:<28}  {snippet}")
        if not hits:
            lines.append("  (no results)")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def build_context(hits: Sequence[Hit], max_chars: int = 8000) -> str:
    """RAG context: numbered chunk texts with their document ids, best first, within a budget.
    ``hits`` in the order to present them: a search's, or a reranked search's (their order is
    the reranker's)."""
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
