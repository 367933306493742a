"""What an evaluation run measures: scores per task and dimension, and throughput, per model.

Plain dataclasses with no dependency on how they were computed (:mod:`smysl.eval.runner`) or how
they are written (:mod:`smysl.eval.report`).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class TaskResult:
    """Scores of one task for one model, per evaluated dimension."""

    task: str
    kind: str
    language: str
    description: str
    main_metric: str
    metric_label: str
    instruction: str | None
    size: dict[str, int]
    #: dimension -> every metric the task computes
    scores: dict[int, dict[str, Any]]
    seconds: float
    #: what makes the scores meaningless (a NaN main score, identical vectors), for the report
    warnings: list[str] = field(default_factory=list)

    def main(self, dims: int) -> float:
        return float(self.scores[dims][self.main_metric])


@dataclass
class RerankResult:
    """One reranking task for one embedder: its first stage ranking and the reranker's, scored
    on the same queries ("before" and "after"), and the reranker's work."""

    task: str
    #: the retrieval task whose data, query instruction and embeddings the first stage uses
    retrieval_task: str
    language: str
    description: str
    reranker: str
    backend: str
    #: instruction the reranker got (None: its own default, or a backend without instructions)
    instruction: str | None
    #: instruction of the embedder's queries in the first stage
    query_instruction: str | None
    #: candidates per query (the embedder's top ``candidates``)
    candidates: int
    #: queries reranked, documents in the corpus, (query, document) pairs reranked in all
    size: dict[str, int]
    #: metrics of the embedder's ranking (native size) and of the reranked candidates
    before: dict[str, float]
    after: dict[str, float]
    #: pairs the reranker scored in this run (reused scores excluded) and its time on them
    pairs_scored: int
    rerank_seconds: float
    #: mean reranker score of the relevant candidates and of the others (None: no such pair)
    relevant_score_mean: float | None
    other_score_mean: float | None
    #: per query: 1-based rank of the first relevant document, None when not among candidates
    rank_before: list[int | None]
    rank_after: list[int | None]
    seconds: float
    main_metric: str = "ndcg_at_10"

    @property
    def recall(self) -> float:
        """Share of relevant documents among the candidates: the ceiling of any reranking."""
        return float(self.before[f"recall_at_{self.candidates}"])

    @property
    def pairs_per_s(self) -> float | None:
        return self.pairs_scored / self.rerank_seconds if self.rerank_seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["recall_at_candidates"] = self.recall
        out["pairs_per_s"] = self.pairs_per_s
        return out


@dataclass
class ModelResult:
    """Everything measured for one model."""

    model: str
    dimensions: int
    min_dimensions: int
    instruction_aware: bool
    evaluated_dimensions: list[int]
    skipped_dimensions: list[int]
    load_seconds: float
    embed_seconds: float
    texts_embedded: int
    tokens_embedded: int
    eval_seconds: float
    tasks: list[TaskResult] = field(default_factory=list)
    machine: str = field(default_factory=lambda: _machine())
    #: the embedder's settings: its ``info()`` (backend, dtype, quantization, device,
    #: max_tokens, fingerprint...) and ``source``; None in results written before it was kept
    info: dict[str, Any] | None = None
    #: the run's settings that decide the scores (:meth:`EvalConfig.protocol`: limit, seed...)
    protocol: dict[str, Any] = field(default_factory=dict)
    #: the reranker of the reranking tasks (its ``info()``, ``source``, load time), if any
    reranker: dict[str, Any] | None = None
    reranking: list[RerankResult] = field(default_factory=list)
    #: Why the run ended before every task was scored ("interrupted after 3 of 9 tasks"), for
    #: a model whose scored tasks were kept; None for a whole run.
    stopped: str | None = None

    @property
    def texts_per_s(self) -> float | None:
        return self.texts_embedded / self.embed_seconds if self.embed_seconds > 0 else None

    @property
    def tokens_per_s(self) -> float | None:
        if self.embed_seconds <= 0 or not self.tokens_embedded:
            return None
        return self.tokens_embedded / self.embed_seconds

    def mean_main(self, dims: int) -> float:
        return float(np.mean([t.main(dims) for t in self.tasks])) if self.tasks else float("nan")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["texts_per_s"] = self.texts_per_s
        out["tokens_per_s"] = self.tokens_per_s
        out["reranking"] = [r.to_json() for r in self.reranking]
        return out


def model_slug(name: str) -> str:
    """A model name as a file or folder name (reports, on-disk embeddings)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _machine() -> str:
    """Short host description for the throughput plot: architecture, cores, GPU if any."""
    text = f"{platform.machine()}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text
