"""Reranking tasks: the embedder retrieves each query's top ``rerank_top`` documents, a reranker
reorders them, and both rankings are scored on the same queries ("before" and "after").

A reranking task reuses a retrieval task (:data:`smysl.eval.tasks.TASKS`): its data, its query
instruction for the embedder, and the embeddings the run already holds (shared with that task).
The first stage is exact cosine search at the model's native size. Each query's candidates go to
the reranker in one :meth:`~smysl.rerank.BaseReranker.rerank` call; a relevant document outside
the candidates stays missing, so recall@``rerank_top`` is the ceiling of every "after" metric.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder
from smysl.eval import metrics as m
from smysl.eval.config import EvalConfig
from smysl.eval.embeddings import ModelEmbeddings
from smysl.eval.results import RerankResult, model_slug
from smysl.eval.tasks import QA, TASKS, Task, select
from smysl.pooling import finish
from smysl.prompts import expand_preset, resolve_task
from smysl.rerank import BaseReranker, order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankTask:
    """A retrieval task's queries reranked. ``instruction`` is the reranker's default (on
    instruction-aware rerankers); ``EvalConfig.instructions[name]`` wins, ``""`` meaning the
    reranker's own default."""

    name: str
    retrieval: str
    description: str
    instruction: str = QA
    kind = "rerank"
    main_metric = "ndcg_at_10"
    metric_label = "nDCG@10"

    @property
    def base(self) -> Task:
        return TASKS[self.retrieval]

    @property
    def language(self) -> str:
        return self.base.language


RERANK_TASKS: dict[str, RerankTask] = {t.name: t for t in [
    RerankTask("xquad-ru-rerank", "xquad-ru",
               "XQuAD ru: the embedder's top candidates reranked"),
    RerankTask("xquad-en-rerank", "xquad-en",
               "XQuAD en: the embedder's top candidates reranked"),
]}


def select_all(names: Sequence[str], *, reranker: bool) -> tuple[list[Task], list[RerankTask]]:
    """Embedding tasks and reranking tasks of a run.

    With a reranker, every selected retrieval task that has a reranking task brings it along
    (no names: every task), and ``rerank`` or a reranking task's name selects reranking alone.
    Without one, naming a reranking task is an error; a reranker that no selected task can use
    is one too (caught before any model loads).
    """
    if not names:
        return list(TASKS.values()), list(RERANK_TASKS.values()) if reranker else []
    tasks: dict[str, Task] = {}
    reranks: dict[str, RerankTask] = {}
    for name in names:
        if name == "rerank" or name in RERANK_TASKS:
            if not reranker:
                raise ValueError(f"task {name!r} needs a reranker (--reranker)")
            reranks.update((t.name, t) for t in RERANK_TASKS.values()
                           if name in ("rerank", t.name))
            continue
        try:
            tasks.update((t.name, t) for t in select([name]))
        except ValueError:
            raise ValueError(f"unknown task {name!r}; known: "
                             f"{', '.join([*TASKS, *RERANK_TASKS])}") from None
    if reranker:
        reranks.update((t.name, t) for t in RERANK_TASKS.values() if t.retrieval in tasks)
        if not reranks:
            raise ValueError("a reranker was given but no selected task reranks; select "
                             f"{', '.join(t.retrieval for t in RERANK_TASKS.values())} or "
                             "'rerank'")
    return list(tasks.values()), list(reranks.values())


def check_instructions(instructions: Mapping[str, str], *, reranking: bool = True) -> None:
    """Refuse an instruction override whose key names no task: a typo (or a kind such as
    ``xquad``) would otherwise leave every task on its default instruction, silently; and,
    unless ``reranking`` (a reranker given), one for a reranking task, which nothing reads."""
    unknown = sorted(set(instructions) - set(TASKS) - set(RERANK_TASKS))
    if unknown:
        raise ValueError(f"instruction for unknown task {', '.join(map(repr, unknown))}: give a "
                         f"task name, one of {', '.join([*TASKS, *RERANK_TASKS])}")
    unread = sorted(set(instructions) & set(RERANK_TASKS)) if not reranking else []
    if unread:  # as --rerank-top without a reranker is refused
        raise ValueError(f"instruction for {', '.join(map(repr, unread))} applies to reranking: "
                         "add a reranker (--reranker MODEL)")
    for task, text in instructions.items():  # a misspelt preset, before any model loads
        try:
            resolve_task(text)
        except ValueError as e:
            raise ValueError(f"instruction for {task!r}: {e}") from None


def query_instruction(model: BaseEmbedder, cfg: EvalConfig, task: Task) -> str | None:
    """The instruction ``model`` embeds ``task``'s queries with: the task's (or the run's
    override; "" for none) on instruction-aware models, none without instructions."""
    if not cfg.use_instructions:
        return None
    return model.choose_instruction(None, role="query",
                                    default=cfg.instructions.get(task.name, task.instruction))


def reranker_instruction(reranker: BaseReranker, cfg: EvalConfig,
                         task: RerankTask) -> str | None:
    """The instruction the reranker gets: the task's (or the run's override) on
    instruction-aware rerankers; None (the reranker's own default) otherwise or for ""."""
    if not (cfg.use_instructions and reranker.instruction_aware):
        return None
    # a preset's name expanded as every reranker path does; "" (or blanks, as the embedders
    # read them) here is the reranker's own
    text = expand_preset(cfg.instructions.get(task.name, task.instruction))
    return text if text and text.strip() else None


def spread(n: int, count: int | None) -> list[int]:
    """``count`` row indices spread evenly over ``n`` rows (all rows when None or >= n)."""
    if count is None or count >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, count).round()})


def reranker_record(reranker: BaseReranker) -> dict[str, Any]:
    """What the reports say of a reranker: its ``info()`` and the string it was loaded from."""
    from dataclasses import asdict

    from smysl.shown import shown_source

    return {**asdict(reranker.info()), "source": reranker.source and shown_source(reranker.source)}


def _key(query: str, document: str) -> bytes:
    return hashlib.sha1(f"{query}\x00{document}".encode()).digest()


class RerankScores:
    """One reranker's scores keyed by instruction, query and document: every distinct pair is
    scored once per run (embedders compared in one run share most candidates).

    With a ``cache_dir`` scores persist there under the reranker's
    :meth:`~smysl.rerank.BaseReranker.fingerprint` (a local checkpoint: its files' names,
    sizes and three windows each; a remote API: its name and settings), so changed weights do
    not reuse old scores, unless edited in place at the same size outside those windows.
    """

    def __init__(self, reranker: BaseReranker, *, cache_dir: Path | None = None) -> None:
        self.reranker = reranker
        #: pairs scored by the reranker (cache hits excluded) and the seconds it took
        self.pairs = 0
        self.seconds = 0.0
        #: per instruction: (score, ordering key) of each pair (see ``scores_and_keys``)
        self._scores: dict[str | None, dict[bytes, tuple[float, float]]] = {}
        self._dirty: set[str | None] = set()
        self._dir = (Path(cache_dir) / f"rerank-{model_slug(reranker.name)}-"
                                        f"{reranker.fingerprint()[:16]}"
                     if cache_dir is not None else None)

    def scores(self, query: str, documents: list[str], instruction: str | None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Scores of ``documents`` for ``query`` and the keys the reranker orders them by
        (:meth:`~smysl.rerank.BaseReranker.scores_and_keys`), in input order; the missing
        ones in one call (over-long pairs truncated, as the embedder's texts are)."""
        store = self._load(instruction)
        keys = [_key(query, d) for d in documents]
        first: dict[bytes, int] = {}  # a document given twice is scored once
        for i, k in enumerate(keys):
            if k not in store:
                first.setdefault(k, i)
        missing = list(first.values())
        if missing:
            start = time.perf_counter()
            got, by = self.reranker.scores_and_keys(query, [documents[i] for i in missing],
                                                    instruction=instruction, truncate=True)
            self.seconds += time.perf_counter() - start
            self.pairs += len(missing)
            for i, s, o in zip(missing, got, by, strict=True):
                store[keys[i]] = (float(s), float(o))
            self._dirty.add(instruction)
        both = np.array([store[k] for k in keys], dtype=np.float64).reshape(len(keys), 2)
        return both[:, 0], both[:, 1]

    def save(self) -> None:
        """Write the scores added since the last save (with a ``cache_dir``)."""
        for instruction in self._dirty:
            path = self._file(instruction)
            if path is None:
                break
            store = self._scores[instruction]
            path.parent.mkdir(parents=True, exist_ok=True)
            keys = np.frombuffer(b"".join(store), dtype=np.uint8).reshape(len(store), -1)
            tmp = path.with_suffix(".tmp.npz")
            both = np.array(list(store.values()), dtype=np.float64).reshape(len(store), 2)
            np.savez(tmp, keys=keys, scores=both[:, 0], order=both[:, 1])
            tmp.replace(path)
        self._dirty.clear()

    def _file(self, instruction: str | None) -> Path | None:
        if self._dir is None:
            return None
        tag = hashlib.sha1((instruction or "").encode()).hexdigest()[:16]
        return self._dir / f"{'default' if instruction is None else 'i'}-{tag}.npz"

    def _load(self, instruction: str | None) -> dict[bytes, tuple[float, float]]:
        if instruction in self._scores:
            return self._scores[instruction]
        store: dict[bytes, tuple[float, float]] = {}
        path = self._file(instruction)
        if path is not None and path.is_file():
            with np.load(path) as z:
                if "order" in z:
                    store = {k.tobytes(): (float(s), float(o))
                             for k, s, o in zip(z["keys"], z["scores"], z["order"], strict=True)}
                else:  # written before the keys were kept: ranked by saturated scores
                    log.info("%s: cached rerank scores without their ordering keys; scoring "
                             "those pairs again", path)
        self._scores[instruction] = store
        return store


def evaluate_rerank(task: RerankTask, model: BaseEmbedder, cfg: EvalConfig,
                    embeddings: ModelEmbeddings, scores: RerankScores, *,
                    progress: bool = False) -> RerankResult:
    """Run one reranking task: first stage with ``model`` (through ``embeddings``, shared with
    the run's other tasks), second stage with ``scores.reranker``; both rankings scored."""
    t0 = time.perf_counter()
    base = task.base
    data = base.load(cfg.data_dir, cfg.limit)
    rows = spread(len(data.queries), cfg.rerank_queries)
    query_ids = [data.query_ids[i] for i in rows]
    queries = [data.queries[i] for i in rows]
    q_instruction = query_instruction(model, cfg, base)
    embeddings.ensure(queries, q_instruction, label=f"{task.name} queries")
    embeddings.ensure(data.docs, None, label=f"{task.name} docs")
    native = model.dimensions
    q = finish(embeddings.get(queries, q_instruction), native)
    d = finish(embeddings.get(data.docs, None), native)
    # the first stage exactly as the retrieval task ranks (same search, same tie order)
    before = m.top_documents(q, d, data.doc_ids, min(cfg.rerank_top, len(data.doc_ids)))
    text = dict(zip(data.doc_ids, data.docs, strict=True))
    instruction = reranker_instruction(scores.reranker, cfg, task)
    pairs0, seconds0 = scores.pairs, scores.seconds
    bar = _bar(len(queries), task.name) if progress else None
    try:
        after, relevant_scores, other_scores = rerank_candidates(
            scores, query_ids, queries, before, text, data.qrels, instruction,
            on_query=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
        scores.save()  # also the pairs scored before a failure (a paid API's, say)
    ks = sorted({k for k in cfg.retrieval_ks if k <= cfg.rerank_top} | {10, cfg.rerank_top})
    info = scores.reranker.info()
    return RerankResult(
        task=task.name, retrieval_task=base.name, language=task.language,
        description=task.description, reranker=info.name, backend=info.backend,
        instruction=instruction, query_instruction=q_instruction, candidates=cfg.rerank_top,
        size={"queries": len(queries), "of_queries": len(data.queries), "docs": len(data.docs),
              "pairs": sum(len(c) for c in before)},
        before=m.ranking_scores(before, query_ids, data.qrels, ks),
        after=m.ranking_scores(after, query_ids, data.qrels, ks),
        pairs_scored=scores.pairs - pairs0, rerank_seconds=scores.seconds - seconds0,
        relevant_score_mean=float(np.mean(relevant_scores)) if relevant_scores else None,
        other_score_mean=float(np.mean(other_scores)) if other_scores else None,
        rank_before=[m.first_relevant_rank(r, data.qrels.get(q_, set()))
                     for q_, r in zip(query_ids, before, strict=True)],
        rank_after=[m.first_relevant_rank(r, data.qrels.get(q_, set()))
                    for q_, r in zip(query_ids, after, strict=True)],
        seconds=time.perf_counter() - t0)


def rerank_candidates(scores: RerankScores, query_ids: Sequence[str], queries: Sequence[str],
                      candidates: Sequence[Sequence[str]], text: dict[str, str],
                      qrels: dict[str, set[str]], instruction: str | None, *,
                      on_query: Callable[[int], object] | None = None,
                      ) -> tuple[list[list[str]], list[float], list[float]]:
    """Each query's candidate ids (``text[id]`` their documents) reordered by the reranker,
    best first (ties keep the first stage's order); also the scores of the relevant candidates
    and of the others. ``on_query(1)`` after each query (a progress bar)."""
    after: list[list[str]] = []
    relevant: list[float] = []
    other: list[float] = []
    for qid, query, cands in zip(query_ids, queries, candidates, strict=True):
        s, by = scores.scores(query, [text[c] for c in cands], instruction)
        after.append([cands[i] for i in order(by, s)])
        rel = qrels.get(qid, set())
        for c, x in zip(cands, s, strict=True):
            (relevant if c in rel else other).append(float(x))
        if on_query is not None:
            on_query(1)
    return after, relevant, other


def _bar(total: int, label: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="query", desc=f"{label} reranking", leave=False)
