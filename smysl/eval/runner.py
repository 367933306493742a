"""Run the tasks of an :class:`EvalConfig` against one or more models."""

from __future__ import annotations

import logging
import time
from typing import Any

from smysl.base import BaseEmbedder
from smysl.eval._deps import require
from smysl.eval.config import EvalConfig
from smysl.eval.embeddings import ModelEmbeddings
from smysl.eval.report import write_reports
from smysl.eval.results import ModelResult, TaskResult
from smysl.eval.tasks import Task, select
from smysl.pooling import finish

log = logging.getLogger(__name__)


def evaluate_model(model: BaseEmbedder, cfg: EvalConfig, *, load_seconds: float = 0.0,
                   tasks: list[Task] | None = None) -> ModelResult:
    """Score ``model`` on the configured tasks at every configured dimension."""
    tasks = tasks if tasks is not None else select(cfg.tasks)
    native = model.dimensions
    dims = sorted({int(x) for x in cfg.dimensions if int(x) <= native} | {native})
    skipped = sorted({int(x) for x in cfg.dimensions if int(x) > native})
    if skipped:
        log.warning("%s: skipping dimensions %s above its native %d", model.name, skipped, native)
    embeddings = ModelEmbeddings(model, cache_dir=cfg.cache_dir, progress=cfg.progress)
    result = ModelResult(model.name, native, model.min_dimensions, model.instruction_aware, dims,
                         skipped, load_seconds, 0.0, 0, 0, 0.0)
    started = time.perf_counter()
    for task in tasks:
        t0 = time.perf_counter()
        # the task's instruction (or the run's override; "" for none) on instruction-aware
        # models, as queries; documents and symmetric tasks decide in task.prepare
        instruction = (model.choose_instruction(
            None, role="query", default=cfg.instructions.get(task.name, task.instruction))
            if cfg.use_instructions else None)
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
        result.tasks.append(TaskResult(
            task.name, task.kind, task.language, task.description, task.main_metric,
            task.metric_label, instruction, prepared.size, scores, time.perf_counter() - t0))
        log.info("%s %s: %s = %.4f", model.name, task.name, task.main_metric,
                 scores[native][task.main_metric])
    result.eval_seconds = time.perf_counter() - started
    result.embed_seconds = embeddings.throughput.seconds
    result.texts_embedded = embeddings.throughput.texts
    result.tokens_embedded = embeddings.throughput.tokens
    return result


def run(cfg: EvalConfig) -> list[ModelResult]:
    """Load each model in turn, evaluate it, and write the reports when ``cfg.out_dir`` is set."""
    from smysl.registry import load

    tasks = select(cfg.tasks)  # fail on a bad task name before loading any model
    results = []
    for name in cfg.models:
        t0 = time.perf_counter()
        model = load(name, cfg.model_options)
        try:
            results.append(evaluate_model(model, cfg, tasks=tasks,
                                          load_seconds=time.perf_counter() - t0))
        finally:
            model.close()
    if cfg.out_dir is not None:
        write_reports(results, cfg)
    return results
