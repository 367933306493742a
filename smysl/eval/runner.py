"""Run the tasks of an :class:`EvalConfig` against one or more models."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder
from smysl.eval._deps import require, require_all
from smysl.eval.config import EvalConfig
from smysl.eval.embeddings import ModelEmbeddings
from smysl.eval.report import check_out_dir, load_runs, write_reports
from smysl.eval.rerank import (
    RerankScores,
    RerankTask,
    check_instructions,
    evaluate_rerank,
    query_instruction,
    reranker_record,
    select_all,
)
from smysl.eval.results import ModelResult, TaskResult
from smysl.eval.tasks import Task, split_instructions
from smysl.pooling import check_dimensions, finish
from smysl.rerank import BaseReranker
from smysl.shown import shown_source

log = logging.getLogger(__name__)


def evaluate_model(model: BaseEmbedder, cfg: EvalConfig, *, load_seconds: float = 0.0,
                   tasks: list[Task] | None = None, reranker: BaseReranker | None = None,
                   rerank_tasks: list[RerankTask] | None = None,
                   rerank_scores: RerankScores | None = None,
                   into: list[ModelResult] | None = None) -> ModelResult:
    """Score ``model`` on the configured tasks at every configured dimension, then, given a
    ``reranker``, rerank its first-stage candidates on the reranking tasks (``rerank_tasks``,
    default those ``cfg.tasks`` selects). ``rerank_scores`` shares the reranker's scores
    between models of one run. ``into``: the result is appended to it before the first task
    and filled as each task ends, so a run that fails or is interrupted keeps what was scored
    (marked :attr:`~ModelResult.stopped`).

    ``cfg.reranker``, when set and no ``reranker`` is given, is loaded for this call and
    closed after it (it was ignored: no reranking, without a word). Nothing is written:
    ``cfg.out_dir`` and ``cfg.compare`` are :func:`run`'s; ``write_reports([result], cfg)``
    writes this result's reports."""
    if reranker is None and cfg.reranker is not None:
        from smysl.registry import load_reranker

        t0 = time.perf_counter()
        owned = load_reranker(cfg.reranker, cfg.reranker_options)
        loaded = time.perf_counter() - t0
        try:
            result = evaluate_model(model, cfg, load_seconds=load_seconds, tasks=tasks,
                                    reranker=owned, rerank_tasks=rerank_tasks,
                                    rerank_scores=rerank_scores, into=into)
        finally:
            _close(owned)
        if result.reranker is not None:
            result.reranker["load_seconds"] = loaded
        return result
    if tasks is None or (reranker is not None and rerank_tasks is None):
        chosen, chosen_reranks = select_all(cfg.tasks, reranker=reranker is not None)
        tasks = tasks if tasks is not None else chosen
        rerank_tasks = rerank_tasks if rerank_tasks is not None else chosen_reranks
    check_instructions(cfg.instructions, reranking=reranker is not None)
    dims, skipped = _dimensions(model, cfg.dimensions)
    native = model.dimensions
    embeddings = ModelEmbeddings(model, cache_dir=cfg.cache_dir, progress=cfg.progress)
    protocol = cfg.protocol()
    if not model.instruction_aware:
        # an embedding task's override does nothing here: recorded, it was a difference
        # (--compare: "Runs differ in instructions") between runs of the same vectors
        unread, read = split_instructions(protocol["instructions"])
        if unread and cfg.use_instructions:
            log.warning("%s takes no instruction: the --instruction for %s does nothing for it",
                        model.name, ", ".join(sorted(unread)))
        protocol["instructions"] = read
    result = ModelResult(model.name, native, model.min_dimensions, model.instruction_aware, dims,
                         skipped, load_seconds, 0.0, 0, 0, 0.0,
                         info={**asdict(model.info()),
                               "source": model.source and shown_source(model.source)},
                         protocol=protocol)
    if into is not None:
        into.append(result)
    started = time.perf_counter()
    try:
        _score_tasks(model, cfg, tasks, embeddings, result)
        if reranker is not None and rerank_tasks:
            if rerank_scores is None:
                rerank_scores = RerankScores(reranker, cache_dir=cfg.cache_dir)
            result.reranker = reranker_record(reranker)
            for rtask in rerank_tasks:
                r = evaluate_rerank(rtask, model, cfg, embeddings, rerank_scores,
                                    progress=cfg.progress)
                result.reranking.append(r)
                log.info("%s + %s %s: nDCG@10 %.4f -> %.4f, MRR@10 %.4f -> %.4f, "
                         "recall@%d %.4f", model.name, reranker.name, rtask.name,
                         r.before["ndcg_at_10"], r.after["ndcg_at_10"], r.before["mrr_at_10"],
                         r.after["mrr_at_10"], r.candidates, r.recall)
    except BaseException as e:  # what ``into`` keeps says it was cut short
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        planned = len(tasks) + len(rerank_tasks or []) * (reranker is not None)
        result.stopped = (f"{why} after {len(result.tasks) + len(result.reranking)} of "
                          f"{planned} tasks")
        raise
    finally:  # a result kept from a stopped run has its times too
        result.eval_seconds = time.perf_counter() - started
        result.embed_seconds = embeddings.throughput.seconds
        result.texts_embedded = embeddings.throughput.texts
        result.tokens_embedded = embeddings.throughput.tokens
    return result


def _close(reranker: BaseReranker) -> None:
    """Close a reranker the run loaded, saying what it cost (a paid API's usage)."""
    try:
        if usage := reranker.usage_report():  # it names the reranker
            log.info("%s", usage)
    finally:
        reranker.close()


def _score_tasks(model: BaseEmbedder, cfg: EvalConfig, tasks: list[Task],
                 embeddings: ModelEmbeddings, result: ModelResult) -> None:
    """Each of ``tasks`` scored at ``result``'s dimensions, appended to ``result.tasks``."""
    dims, native = result.evaluated_dimensions, result.dimensions
    for task in tasks:
        t0 = time.perf_counter()
        # the task's instruction (or the run's override; "" for none) on instruction-aware
        # models, as queries; documents and symmetric tasks decide in task.prepare
        instruction = query_instruction(model, cfg, task)
        prepared = task.prepare(cfg, instruction)
        for req in prepared.requests:
            embeddings.ensure(req.texts, req.instruction, label=f"{task.name} {req.role}")
        full = {req.role: embeddings.get(req.texts, req.instruction) for req in prepared.requests}
        scores: dict[int, dict[str, Any]] = {}
        # One BLAS/OpenMP thread for scoring: the matrices are small, and on shared cores
        # k-means and lbfgs threads spin-wait for each other (measured 20x slower on 2 busy cores).
        with require("threadpoolctl", "scikit-learn").threadpool_limits(limits=1):
            for dim in dims:
                # Matryoshka: the first `dim` components re-normalised, from the full vectors
                vectors = {role: finish(v, dim) for role, v in full.items()}
                scores[dim] = prepared.score(vectors)
        warnings = prepared.warnings + _degenerate(full) + [
            f"main score {task.main_metric} is NaN at {dim} d" for dim in dims
            if not math.isfinite(float(scores[dim][task.main_metric]))]
        for w in warnings:
            log.warning("%s %s: %s", model.name, task.name, w)
        result.tasks.append(TaskResult(
            task.name, task.kind, task.language, task.description, task.main_metric,
            task.metric_label, instruction, prepared.size, scores, time.perf_counter() - t0,
            warnings))
        log.info("%s %s: %s = %.4f", model.name, task.name, task.main_metric,
                 scores[native][task.main_metric])


def _dimensions(model: BaseEmbedder, asked: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """The sizes to score (the native one included) and those skipped above it. A size the
    model refuses below its ``min_dimensions`` is an error (:func:`smysl.pooling.check_dimensions`)
    when the model was trained for Matryoshka; one not trained for it (``min_dimensions`` = its
    size) is scored at any smaller size: what naive truncation costs (the summary says so)."""
    native = model.dimensions
    matryoshka = model.min_dimensions < native
    for x in asked:
        if matryoshka and int(x) <= native:
            try:
                check_dimensions(int(x), native, minimum=model.min_dimensions)
            except ValueError as e:
                raise ValueError(f"{model.name}: {e} (--dimensions)") from None
    dims = sorted({int(x) for x in asked if int(x) <= native} | {native})
    skipped = sorted({int(x) for x in asked if int(x) > native})
    if skipped:
        log.warning("%s: skipping dimensions %s above its native %d", model.name, skipped, native)
    return dims, skipped


def _degenerate(vectors: dict[str, np.ndarray]) -> list[str]:
    """A line per role whose vectors are all the same (every text truncated to the same
    tokens, say): its scores then measure nothing."""
    return [f"all {len(v)} {role} vectors are identical (texts cut to the same tokens by "
            "--max-tokens?)" for role, v in vectors.items()
            if len(v) > 1 and float(np.abs(v - v[0]).max()) <= 1e-6]


def run(cfg: EvalConfig) -> list[ModelResult]:
    """Load each model in turn, evaluate it, and write the reports when ``cfg.out_dir`` is set."""
    from smysl.registry import load, load_reranker

    # fail on a bad task name, instruction, --compare folder, report folder or a missing
    # dataset before loading any model (a missing file of the third task was found after
    # the first two were scored, and nothing was written)
    require_all(cfg.plots and cfg.out_dir is not None)
    tasks, rerank_tasks = select_all(cfg.tasks, reranker=cfg.reranker is not None)
    check_instructions(cfg.instructions, reranking=cfg.reranker is not None)
    compared = [run for folder in cfg.compare for run in load_runs(folder)]
    if cfg.out_dir is not None:
        check_out_dir(cfg.out_dir, cfg.compare)
    for task in [*tasks, *(r.base for r in rerank_tasks)]:
        task.load(cfg.data_dir, 2)
    reranker: BaseReranker | None = None
    rerank_scores = None
    reranker_load = 0.0
    results: list[ModelResult] = []
    begun: list[ModelResult] = []  # results.append'ed once whole; this one as each task ends
    try:
        if cfg.reranker is not None:
            t0 = time.perf_counter()
            reranker = load_reranker(cfg.reranker, cfg.reranker_options)
            reranker_load = time.perf_counter() - t0
            rerank_scores = RerankScores(reranker, cache_dir=cfg.cache_dir)
        for name in cfg.models:
            t0 = time.perf_counter()
            try:
                model = load(name, cfg.model_options)
                try:
                    result = evaluate_model(model, cfg, tasks=tasks, reranker=reranker,
                                            rerank_tasks=rerank_tasks,
                                            rerank_scores=rerank_scores,
                                            load_seconds=time.perf_counter() - t0,
                                            into=begun)
                finally:
                    model.close()
            except BaseException as e:
                # the models evaluated so far keep their reports (a bad second model string
                # threw the first model's hour away), and so do the tasks this one finished
                # (a Ctrl-C in the last task of an hour's run kept nothing)
                kept = [r for r in begun[len(results):] if r.tasks or r.reranking]
                # the models with no result are named: the report of the first model alone
                # looked like a whole run of it
                missing = cfg.models[len(results) + len(kept):]
                why = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                stopped = (f"{why} at {name}: no results of {', '.join(missing)}"
                           if missing else None)
                if results + kept and cfg.out_dir is not None:
                    write_reports(results + kept, cfg, compared, stopped=stopped)
                    parts = [f"the {len(results)} model(s) evaluated before it"] if results else []
                    parts += [f"the tasks it scored ({r.stopped})" for r in kept]
                    log.warning("%s stopped: wrote the reports of %s to %s", name,
                                " and ".join(parts), cfg.out_dir)
                raise
            if result.reranker is not None:
                result.reranker["load_seconds"] = reranker_load
            results.append(result)
    finally:
        if reranker is not None:
            _close(reranker)
    if cfg.out_dir is not None:
        write_reports(results, cfg, compared)
    return results
