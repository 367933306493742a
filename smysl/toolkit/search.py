"""Search and RAG retrieval over a store: top-k with scores and payloads, filters, optional MMR,
optional reranking of the top candidates by a :class:`~smysl.rerank.BaseReranker`.

Three ways to rank (``SearchConfig.mode``): ``vector``, by the cosine of the query's embedding;
``text``, by the lexical relevance (BM25) of the query's words (:mod:`smysl.toolkit.lexical`:
Russian and English words by their stems), which finds the exact names, numbers and codes an
embedding blurs; ``hybrid``, both rankings of ``fetch_k`` candidates each fused by reciprocal
rank (:class:`FusedHit`).

Reranking is two-stage: the store returns the ``rerank_top`` nearest chunks (filters and the
damaged-vector check apply there), the reranker scores each (query, chunk text) pair, and the best
``k`` by that score come back as :class:`RerankedHit` (``score``: the reranker's,
``vector_score``: the first stage's score). This module imports no reranker code: a local
reranker brings torch only when the caller loads one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smysl.base import positive_int
from smysl.toolkit import lexical
from smysl.toolkit.store import Hit, VectorStore, Where

if TYPE_CHECKING:
    from smysl.rerank import BaseReranker

#: Why MMR and reranking do not combine (both choose the final k out of the candidates).
MMR_AND_RERANK = ("MMR and reranking both choose the final hits out of the candidates, by "
                  "different scores: use one of them (--mmr / SearchConfig(mmr=True), or "
                  "--rerank / reranker=)")
#: Why MMR needs the vector ranking.
MMR_NEEDS_VECTORS = ("MMR diversifies the hits of a vector search: use it with mode 'vector' "
                     "(--mode vector), or search in mode 'text'/'hybrid' without it")
#: Largest ``text_weight``: beyond it the vector ranking only breaks the word ranking's ties.
MAX_TEXT_WEIGHT = 100.0
#: The most chunks a search with ``per_document`` looks through (per query, or 100 times its
#: ``k`` where more) for hits of enough documents: a document of 20,000 chunks is a book of
#: ~10 million characters.
PER_DOCUMENT_DEPTH = 20_000
Mode = Literal["vector", "hybrid", "text"]
MODES: tuple[Mode, ...] = ("vector", "hybrid", "text")


@dataclass(frozen=True)
class SearchConfig:
    """How a query is answered.

    Attributes:
        k: Hits per query.
        mode: ``"vector"`` ranks by the cosine of the query's embedding; ``"text"`` by the
            lexical relevance (BM25) of its words (no embedding); ``"hybrid"`` fuses both
            rankings, ``fetch_k`` candidates each (at least the hits wanted), by reciprocal
            rank (:class:`FusedHit`).
        instruction: Query instruction (a task or preset name); None uses the model's default task
            when the model takes instructions; ``""`` embeds queries bare.
        where: Payload filter (see :mod:`smysl.toolkit.store`), applied before ranking.
        exact: Brute-force scan (True) or the store's approximate index when it has one.
        mmr: Re-rank ``fetch_k`` candidates by maximal marginal relevance for diverse results.
        mmr_lambda: MMR trade-off: 1 is pure relevance, 0 pure diversity.
        fetch_k: Candidates MMR chooses from; with ``mode="hybrid"``, candidates of each
            ranking.
        rrf_k: Reciprocal rank fusion constant: a hit scores ``weight / (rrf_k + rank)`` per
            ranking it is in.
        text_weight: With ``mode="hybrid"``: the weight of the lexical ranking (the vector
            ranking weighs 1); above 1 where the words matter more (codes, names, or a model
            weak in the language), below where meaning does; 0 is the vector ranking.
        rerank_top: With a reranker: candidates the vector search fetches and the reranker
            scores (``max(rerank_top, k)`` of them); the best ``k`` are returned.
        rerank_instruction: With a reranker: its instruction (Qwen3-Reranker's
            ``<Instruct>`` line); None is the reranker's default.
        rerank_truncate: With a reranker: cut chunks that exceed its token limit (True) or
            fail on them.
        truncate: Cut a query longer than the model takes at its limit; False (the default)
            refuses it with :class:`~smysl.tokenize.InputTooLongError` (its ``index`` is the
            query's): a query cut without a word searched for something else.
        per_document: At most this many chunks of one document (the payload's ``doc_id``)
            among the hits, so that one long document does not fill them all; the search
            widens until each query has its ``k``, the store has no more, or it has looked
            through :data:`PER_DOCUMENT_DEPTH` chunks (20,000; 100 x ``k`` where more): a
            query whose nearest chunks all come from fewer documents gets fewer hits. With MMR or a
            reranker it applies to their candidates too. None: no limit.
    """

    k: int = 10
    mode: Mode = "vector"
    instruction: str | None = None
    where: Where | None = None
    exact: bool = True
    mmr: bool = False
    mmr_lambda: float = 0.5
    fetch_k: int = 50
    rrf_k: int = lexical.RRF_K
    text_weight: float = 1.0
    rerank_top: int = 50
    rerank_instruction: str | None = None
    rerank_truncate: bool = True
    truncate: bool = False
    per_document: int | None = None

    def __post_init__(self) -> None:
        if positive_int(self.k) is None:  # numpy integers too, as everywhere in smysl
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mmr and self.mode != "vector":
            raise ValueError(MMR_NEEDS_VECTORS)
        if isinstance(self.text_weight, bool) or not isinstance(self.text_weight, int | float) \
                or not 0.0 <= self.text_weight <= MAX_TEXT_WEIGHT:
            raise ValueError(f"text_weight must be a number in [0, {MAX_TEXT_WEIGHT:g}], got "
                             f"{self.text_weight!r}")
        for name in ("fetch_k", "rrf_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if isinstance(self.rerank_top, bool) or not isinstance(self.rerank_top, int) \
                or self.rerank_top < 1:
            raise ValueError(f"rerank_top must be an integer >= 1, got {self.rerank_top!r}")
        if self.per_document is not None and positive_int(self.per_document) is None:
            raise ValueError("per_document must be an integer >= 1 or None, got "
                             f"{self.per_document!r}")


@dataclass(frozen=True)
class RerankedHit(Hit):
    """A hit reordered by a reranker: ``score`` is the reranker's relevance score (higher is
    more relevant; Qwen3-Reranker: P("yes") in [0, 1]), ``vector_score`` the score the first
    stage gave it (the cosine in mode vector; BM25 or the fused score in text/hybrid) and
    ``vector_rank`` its place there (1 = first)."""

    vector_score: float = float("nan")
    vector_rank: int = 0


@dataclass(frozen=True)
class FusedHit(Hit):
    """A hybrid-search hit: ``score`` is its reciprocal rank fusion score; ``vector_rank`` and
    ``text_rank`` its places in the vector and the lexical ranking (1 = first; None: not among
    that ranking's candidates), ``vector_score`` and ``text_score`` its scores there (the
    cosine, the store's BM25; None likewise)."""

    vector_score: float | None = None
    vector_rank: int | None = None
    text_score: float | None = None
    text_rank: int | None = None


def check_queries(queries: Sequence[str]) -> None:
    """An empty or all-whitespace query is refused before anything is embedded: embedded,
    it gave arbitrary neighbours; by words, no hit, without a word why."""
    if isinstance(queries, str):  # its letters would be the queries
        raise TypeError("queries: a list of strings, not one string")
    for i, q in enumerate(queries):
        if isinstance(q, str) and not q.strip():
            raise ValueError(f"a query is empty (query {i}); give its text")


#: Hits a store is asked for past ``k``: ties at the cut are settled by id here, not by the
#: store's own order of equal scores (:func:`_by_score`), where no more than this many more
#: hits tie with the k-th.
_TIES = 8


def _by_score(found: list[list[Hit]], k: int) -> list[list[Hit]]:
    """Each query's hits best first, equal scores by id, cut to ``k``: LanceDB and the memory
    store listed equal BM25 scores (duplicate texts: equal cosines) in orders of their own,
    and hybrid search, which fuses ranks, then differed between them too. (A NaN score, of a
    damaged vector, goes last: compared, it would leave the order undefined.)"""
    return [sorted(hits, key=lambda h: (math.isnan(h.score), -h.score, h.id))[:k]
            for hits in found]


def search_vectors(store: VectorStore, queries: np.ndarray | None, config: SearchConfig,
                   check: Callable[[Hit], bool] | None = None, *,
                   reranker: BaseReranker | None = None,
                   texts: Sequence[str] | None = None,
                   terms: Sequence[Sequence[str]] | None = None) -> list[list[Hit]]:
    """Top-k hits per query, ranked as ``config.mode`` says: by the query vectors
    (``queries``, ``[n, d]``), by the queries' lexical ``terms``
    (:func:`~smysl.toolkit.lexical.analyze` of each query text), or both fused
    (:class:`FusedHit`). With MMR, ``k`` diverse hits out of ``fetch_k``; with a ``reranker``,
    the best ``k`` by its score out of ``max(rerank_top, k)`` first-stage hits
    (:class:`RerankedHit`; ``texts``, the query texts in query order, are what it reads). MMR
    and a reranker together are refused (``ValueError``).

    ``check`` (given the hit with its vector) rejects hits that must not be served, e.g. a
    damaged stored vector; the search then widens until each query has its good candidates or
    the store has no more.
    """
    if config.mode != "text" and queries is None:
        raise ValueError(f"mode {config.mode!r} needs the query vectors")
    if config.mode != "vector" and terms is None:
        raise ValueError(f"mode {config.mode!r} needs the queries' terms")
    n = len(np.atleast_2d(queries)) if queries is not None else len(terms or ())
    if queries is not None and terms is not None and len(terms) != n:
        raise ValueError(f"{n} query vectors but {len(terms)} term lists")
    if reranker is not None:
        if config.mmr:
            raise ValueError(MMR_AND_RERANK)
        if texts is None or isinstance(texts, str) or len(texts) != n:
            raise ValueError("reranking needs the query texts, one per query")
        pool = first_stage(store, config, queries, terms,
                           candidates(config, reranking=True), check)
        out: list[list[Hit]] = []
        for text, hits in zip(texts, pool, strict=True):
            best: list[Hit] = list(rerank_hits(reranker, text, hits, k=config.k,
                                               instruction=config.rerank_instruction,
                                               truncate=config.rerank_truncate))
            out.append(best)
        return out
    want = candidates(config, reranking=False)
    pool = first_stage(store, config, queries, terms, want, check)
    if not config.mmr:
        return [[dataclasses.replace(h, vector=None) for h in hits] for hits in pool]
    q = np.atleast_2d(np.asarray(queries, np.float32))
    return [mmr(q[i], hits, config.k, config.mmr_lambda) for i, hits in enumerate(pool)]


def candidates(config: SearchConfig, *, reranking: bool) -> int:
    """How many first-stage hits a search takes per query: ``max(rerank_top, k)`` when
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
    ranked = reranker.rerank(query, hit_texts(hits), instruction=instruction, top_n=k,
                             truncate=truncate)
    return reorder_hits(hits, ranked)


def hit_texts(hits: Sequence[Hit]) -> list[str]:
    """The chunk text of each hit, what a reranker scores; ``ValueError`` naming a hit whose
    payload has none (an index written without texts: scored as "" it ranked anywhere)."""
    texts = []
    for h in hits:
        text = h.payload.get("text")
        if not isinstance(text, str):
            raise ValueError(f"hit {h.id!r} has no text in its payload to rerank")
        texts.append(text)
    return texts


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


def first_stage(store: VectorStore, config: SearchConfig, queries: np.ndarray | None,
                terms: Sequence[Sequence[str]] | None, want: int,
                check: Callable[[Hit], bool] | None) -> list[list[Hit]]:
    """The ``want`` best hits per query as ``config.mode`` ranks them (see
    :func:`search_vectors`), each passed by ``check``, at most ``config.per_document`` of a
    document; with vectors when checked or for MMR."""
    n = len(np.atleast_2d(queries)) if queries is not None else len(terms or ())
    cap = config.per_document
    if cap is None:
        return _ranked(store, config, queries, terms, want, check, list(range(n)))
    # Bounded: a few documents of many chunks each would otherwise widen the search to the
    # whole store (200,000 chunks of 5 documents: 15 s and 509 MiB for k=10).
    depth = max(PER_DOCUMENT_DEPTH, 100 * want)
    return _deepen(lambda k, sub: _ranked(store, config, queries, terms, k, check, sub), n,
                   want, lambda hits: per_document(hits, cap), lambda k, _lost: min(2 * k, depth))


def per_document(hits: Sequence[Hit], cap: int) -> list[Hit]:
    """``hits`` in their order, past the first ``cap`` of each document left out. A hit whose
    payload has no ``doc_id`` (or null) is a document of its own; ids are compared as JSON,
    so 1, 1.0, true and "1" are four documents."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for h in hits:
        doc = h.payload.get("doc_id")
        key = ("id", h.id) if doc is None else ("doc", json.dumps(doc, sort_keys=True,
                                                                   default=str))
        if seen.get(key, 0) < cap:
            seen[key] = seen.get(key, 0) + 1
            out.append(h)
    return out


def _ranked(store: VectorStore, config: SearchConfig, queries: np.ndarray | None,
            terms: Sequence[Sequence[str]] | None, want: int,
            check: Callable[[Hit], bool] | None, rows: list[int]) -> list[list[Hit]]:
    """:func:`first_stage` without the per-document cap, for queries ``rows`` only."""
    vectors = check is not None or config.mmr
    q = np.atleast_2d(queries)[rows] if queries is not None else None
    t = [terms[i] for i in rows] if terms is not None else None

    def by_vector(k: int, sub: list[int]) -> list[list[Hit]]:
        assert q is not None
        return _by_score(store.search(q[sub], k + _TIES, where=config.where,
                                      exact=config.exact, with_vectors=vectors), k)

    def by_text(k: int, sub: list[int]) -> list[list[Hit]]:
        assert t is not None
        return _by_score(store.search_text([t[i] for i in sub], k + _TIES, where=config.where,
                                           with_vectors=vectors), k)

    if config.mode == "vector":
        return _checked(by_vector, len(rows), want, check)
    if config.mode == "text":
        return _checked(by_text, len(rows), want, check)
    pool = max(config.fetch_k, want)
    return [list[Hit](fuse_hits(v, t, want, config.rrf_k, config.text_weight)) for v, t in zip(
        _checked(by_vector, len(rows), pool, check), _checked(by_text, len(rows), pool, check),
        strict=True)]


def fuse_hits(by_vector: Sequence[Hit], by_text: Sequence[Hit], k: int,
              rrf_k: int = lexical.RRF_K, text_weight: float = 1.0) -> list[FusedHit]:
    """One query's vector and lexical hits (each best first) fused by reciprocal rank, the
    lexical ranking weighing ``text_weight``: the best ``k``, as :class:`FusedHit`."""
    hits = {h.id: h for h in (*by_text, *by_vector)}  # the vector search's copy where both
    scores = ({h.id: h.score for h in by_vector}, {h.id: h.score for h in by_text})
    return [FusedHit(i, score, hits[i].payload, hits[i].vector,
                     vector_score=scores[0].get(i), vector_rank=ranks[0],
                     text_score=scores[1].get(i), text_rank=ranks[1])
            for i, score, ranks in lexical.fuse(
                [[h.id for h in by_vector], [h.id for h in by_text]], k, rrf_k,
                [1.0, text_weight])]


def _checked(search: Callable[[int, list[int]], list[list[Hit]]], n: int, want: int,
             check: Callable[[Hit], bool] | None) -> list[list[Hit]]:
    """The ``want`` best hits passed by ``check`` for each of ``n`` queries; ``search(k,
    sub)``: the ``k`` best of queries ``sub``."""
    if check is None:
        return search(want, list(range(n)))
    return _deepen(search, n, want, lambda hits: [h for h in hits if check(h)],
                   lambda k, lost: k + lost)


def _deepen(search: Callable[[int, list[int]], list[list[Hit]]], n: int, want: int,
            keep: Callable[[list[Hit]], list[Hit]], deeper: Callable[[int, int], int]
            ) -> list[list[Hit]]:
    """The first ``want`` of the hits ``keep`` leaves for each of ``n`` queries;
    ``search(k, sub)``: the ``k`` best of queries ``sub``. A query left short of ``want``
    while the store gave it ``k`` may have more further down: it alone (not the batch) is
    searched again, ``deeper(k, lost)`` deep (``lost``: the most hits ``keep`` took from
    one such query; no deeper than it was: the search stops there)."""
    out: list[list[Hit]] = [[] for _ in range(n)]
    todo, k = list(range(n)), want
    while todo:
        short, lost = [], 0
        for i, hits in zip(todo, search(k, todo), strict=True):
            kept = keep(hits)
            out[i] = kept[:want]
            if len(kept) < want and len(hits) == k:
                short.append(i)
                lost = max(lost, len(hits) - len(kept))
        todo, last, k = short, k, deeper(k, lost)
        if k <= last:  # at its bound: what was found is the answer
            break
    return out


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
    """``score`` (and, for a reranked hit, ``vector_score`` and ``vector_rank``; for a fused
    one, also ``text_score`` and ``text_rank``, None where it was not that ranking's) of a
    hit."""
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 6)

    out: dict[str, Any] = {"score": round(h.score, 6)}
    if isinstance(h, RerankedHit):
        out.update(vector_score=round(h.vector_score, 6), vector_rank=h.vector_rank)
    elif isinstance(h, FusedHit):
        out.update(vector_score=r(h.vector_score), vector_rank=h.vector_rank,
                   text_score=r(h.text_score), text_rank=h.text_rank)
    return out


def hits_to_rows(queries: Sequence[str], results: Sequence[Sequence[Hit]]) -> list[dict[str, Any]]:
    """Flat JSON-ready rows: query, rank, id, score (reranked and fused hits: also their
    first-stage scores and ranks, see :func:`format_json`) and the payload. A payload field
    named as one of those (a document's own ``score`` or ``id`` column) comes as
    ``payload_<name>``: it replaced the hit's."""
    rows = []
    for q, hits in zip(queries, results, strict=True):
        for r, h in enumerate(hits, 1):
            row: dict[str, Any] = {"query": q, "rank": r, "id": h.id, **_scores(h)}
            for key, value in h.payload.items():
                name = key
                while name in row:
                    name = f"payload_{name}"
                row[name] = value
            rows.append(row)
    return rows


def format_json(queries: Sequence[str], results: Sequence[Sequence[Hit]]) -> str:
    """One JSON object per query: ``{"query", "hits": [{"id", "score", "payload"}]}`` per line;
    reranked hits also carry ``vector_score`` and ``vector_rank``, fused (hybrid) hits those
    and ``text_score`` and ``text_rank`` (None where the hit was not that ranking's)."""
    return "\n".join(json.dumps({"query": q, "hits": [
        {"id": h.id, **_scores(h), "payload": h.payload} for h in hits]},
        ensure_ascii=False) for q, hits in zip(queries, results, strict=True))


def format_table(queries: Sequence[str], results: Sequence[Sequence[Hit]],
                 width: int = 100) -> str:
    """A readable table per query: rank, score, id and a one-line snippet of the text.
    Reranked hits show the reranker's score (``rerank``), the vector search's cosine
    (``vector``) and their rank there (``was``); fused (hybrid) hits the fusion score
    (``fused``) and their ranks in the vector and the lexical ranking (``vec#``, ``text#``; ``-``:
    not among its candidates)."""
    lines = []
    for q, hits in zip(queries, results, strict=True):
        reranked = any(isinstance(h, RerankedHit) for h in hits)
        fused = not reranked and any(isinstance(h, FusedHit) for h in hits)
        lines.append(f"query: {q}")
        lines.append(f"{'#':>3}  {'rerank':>7}  {'vector':>7}  {'was':>4}  {'id':<28}  text"
                     if reranked else
                     f"{'#':>3}  {'fused':>7}  {'vec#':>4}  {'text#':>5}  {'id':<28}  text"
                     if fused else f"{'#':>3}  {'score':>7}  {'id':<28}  text")
        for r, h in enumerate(hits, 1):
            text = " ".join(str(h.payload.get("text", "")).split())
            snippet = text if len(text) <= width else text[: width - 1] + "…"
            scores = f"{h.score:7.4f}"
            if reranked:
                scores += (f"  {h.vector_score:7.4f}  {h.vector_rank:>4}"
                           if isinstance(h, RerankedHit) else f"  {'':7}  {'':>4}")
            elif fused and isinstance(h, FusedHit):
                scores += f"  {h.vector_rank or '-':>4}  {h.text_rank or '-':>5}"
            # a long id's end: default ids are paths, whose start every hit of a folder
            # shares (they read alike, and the "#chunk" was cut off)
            shown = h.id if len(h.id) <= 28 else "…" + h.id[-27:]
            lines.append(f"{r:>3}  {scores}  {shown:<28}  {snippet}")
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
