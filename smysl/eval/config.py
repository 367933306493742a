"""The one configuration object of an evaluation run, built at the edge (CLI or caller)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smysl.eval.data import DEFAULT_DATA_DIR
from smysl.eval.metrics import CLUSTER_SAMPLE_SIZE
from smysl.options import ModelOptions

#: Fields of :class:`EvalConfig` that decide the scores, recorded with every run's results.
PROTOCOL = ("limit", "seed", "n_experiments", "samples_per_label", "max_iter",
            "clustering_bootstraps", "clustering_sample_size", "retrieval_ks", "use_instructions",
            "rerank_top", "rerank_queries", "instructions")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. Defaults follow MTEB's protocols.

    Fields:
        models: model strings as :func:`smysl.load` takes them (``st:all-minilm-l6-v2``, a
            checkpoint directory, a Hub id, ``provider:model``); each is evaluated in turn.
        tasks: task names from :data:`smysl.eval.tasks.TASKS`; empty means all of them.
        dimensions: Matryoshka sizes to score besides the model's native size. Each is scored
            from the full vectors by truncation and re-normalisation; sizes above the native
            size are skipped. A size below a Matryoshka model's ``min_dimensions`` is refused
            before anything is embedded, as the model refuses it; a model not trained for
            Matryoshka (``min_dimensions`` = its size) takes any smaller size, as a study of
            naive truncation.
        data_dir: folder holding ``stsb/``, ``paraphraser/``, ``sentirueval/``, ``intents/`` and
            ``xquad/`` (``../shared/datasets`` by default); read in place, never copied.
        out_dir: where JSON, Markdown and PNG reports go; None writes nothing.
        limit: keep only the first ``limit`` rows (pairs, train/test texts, questions) of every
            task; for smoke tests, never for reported numbers.
        seed: seed of every random choice (MTEB uses 42).
        n_experiments: classification repeats, each with a new undersampled training set.
        samples_per_label: training texts per label in each classification experiment (MTEB: 8).
        max_iter: LogisticRegression iterations (MTEB: 100).
        clustering_bootstraps: clustering repeats on resampled texts (MTEB: 10).
        clustering_sample_size: texts drawn (with replacement) for each clustering repeat (MTEB's
            ``max_documents_per_cluster``: 16,384).
        retrieval_ks: cut-offs for nDCG@k, recall@k, MRR@k and MAP@k (10 is always
            computed: nDCG@10 is the main metric).
        use_instructions: apply task instructions to instruction-aware models; models that are not
            instruction-aware never get one.
        instructions: per-task instruction overrides, ``{task name: instruction}``; an empty
            string means "no instruction" for that task. A key that names no task (nor a
            reranking task) is refused.
        model_options: how every model loads (device, dtype, quantize, ...); a model whose
            backend cannot use a set option fails to load with an error naming it.
        cache_dir: if set, embeddings are kept there per model and instruction and reused by the
            next run (development); None embeds everything afresh.
        compare: earlier run folders (with ``results.json``) to include in the summary and the
            quality-vs-throughput plot.
        progress: show progress bars while embedding.
        plots: write PNG plots (needs matplotlib).
        reranker: a reranker model string as :func:`smysl.load_reranker` takes it (a
            Qwen3-Reranker directory or Hub id, ``siliconflow:...``); when set, the reranking
            tasks (:data:`smysl.eval.rerank.RERANK_TASKS`) run for every model. None: no reranking.
        reranker_options: how the reranker loads (device, dtype, ...), as ``model_options``.
        rerank_top: candidates per query: the embedder's top ``rerank_top`` documents, which the
            reranker reorders (a relevant document outside them stays missing).
        rerank_queries: rerank only this many queries, spread evenly over each task's queries
            (the corpus stays whole); None: every query. For short runs.
    """

    models: tuple[str, ...]
    tasks: tuple[str, ...] = ()
    dimensions: tuple[int, ...] = ()
    data_dir: Path = DEFAULT_DATA_DIR
    out_dir: Path | None = None
    limit: int | None = None
    seed: int = 42
    n_experiments: int = 10
    samples_per_label: int = 8
    max_iter: int = 100
    clustering_bootstraps: int = 10
    clustering_sample_size: int = CLUSTER_SAMPLE_SIZE
    retrieval_ks: tuple[int, ...] = (1, 3, 5, 10, 100)
    use_instructions: bool = True
    instructions: Mapping[str, str] = field(default_factory=dict)
    model_options: ModelOptions = field(default_factory=ModelOptions)
    cache_dir: Path | None = None
    compare: tuple[Path, ...] = ()
    progress: bool = True
    plots: bool = True
    reranker: str | None = None
    reranker_options: ModelOptions = field(default_factory=ModelOptions)
    rerank_top: int = 50
    rerank_queries: int | None = None

    def protocol(self) -> dict[str, Any]:
        """The settings that decide the scores (JSON types): runs that differ in one of them
        are not comparable (:data:`PROTOCOL`)."""
        return {k: list(v) if isinstance(v := getattr(self, k), tuple)
                else dict(v) if isinstance(v, Mapping) else v for k in PROTOCOL}

    def __post_init__(self) -> None:
        # one model, task, size or folder given bare: a tuple of it (a str was taken for a
        # sequence of one-letter models: "'s' is not a model directory"); lists: tuples
        for name in ("models", "tasks", "dimensions", "retrieval_ks", "compare"):
            value = getattr(self, name)
            if isinstance(value, str | int | Path):
                object.__setattr__(self, name, (value,))
            elif not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "compare", tuple(Path(p) for p in self.compare))
        if not self.models:
            raise ValueError("EvalConfig needs at least one model")
        if self.instructions and not self.use_instructions:  # ran without them, recorded them
            raise ValueError("instructions do nothing with use_instructions=False "
                             "(--instruction with --no-instructions)")
        if any(int(d) < 1 for d in self.dimensions):
            raise ValueError(f"dimensions must be positive, got {self.dimensions}")
        if self.limit is not None and self.limit < 2:  # a correlation needs two pairs
            raise ValueError(f"limit must be at least 2, got {self.limit}")
        for name in ("n_experiments", "samples_per_label", "max_iter", "clustering_bootstraps",
                     "clustering_sample_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # numpy's range, found after the model had loaded
            raise ValueError(f"seed must be in 0..{2**32 - 1}, got {self.seed}")
        if self.rerank_top < 1:
            raise ValueError(f"rerank_top must be positive, got {self.rerank_top}")
        if self.rerank_queries is not None and self.rerank_queries < 1:
            raise ValueError(f"rerank_queries must be positive, got {self.rerank_queries}")
        if self.reranker is not None and not self.reranker.strip():
            raise ValueError("reranker must be a model string or None")
        if not self.retrieval_ks or min(self.retrieval_ks) < 1:
            raise ValueError(f"retrieval_ks must be positive, got {self.retrieval_ks}")
