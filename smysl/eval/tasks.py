"""The task registry: what each task embeds (with which instruction) and how it is scored.

A task is prepared once per model into a :class:`Prepared`: the texts it needs embedded, grouped
into roles (``texts1``, ``queries``, ``train``, ...) with the instruction each role gets, and a
``score`` function from unit vectors per role to metrics. The runner embeds every distinct
(instruction, text) once and calls ``score`` once per Matryoshka dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smysl.eval import data as d
from smysl.eval import metrics as m
from smysl.eval.config import EvalConfig

Kind = Literal["sts", "pair", "classification", "clustering", "retrieval"]

#: Instructions the way Qwen evaluated Qwen3-Embedding: STS and pair tasks use one instruction on
#: both sides; retrieval instructs the query side only; classification and clustering instruct
#: every text with a task-specific description.
SIMILAR = "Retrieve semantically similar text"
QA = "Given a question, retrieve passages that answer the question"
INTENT = "Given a user utterance as query, find the user intents"
SENTIMENT = "Classify the sentiment of the given text as positive, negative or neutral"
INTENT_CLUSTER = "Identify the intent of the given user utterance"


@dataclass(frozen=True)
class Request:
    """Texts of one role, embedded with one instruction (None: as documents)."""

    role: str
    texts: list[str]
    instruction: str | None


@dataclass(frozen=True)
class Prepared:
    """A task ready to run: its embedding requests and its scoring function."""

    requests: list[Request]
    score: Callable[[dict[str, np.ndarray]], dict[str, Any]]
    size: dict[str, int]
    #: What makes its scores say little about the model (a subset too small for its labels).
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Task:
    """One evaluation task. ``instruction`` is the default; ``EvalConfig.instructions`` wins."""

    name: str
    kind: Kind
    language: str
    main_metric: str
    description: str
    instruction: str
    load: Callable[[Path, int | None], Any]

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.main_metric, self.main_metric)

    def prepare(self, cfg: EvalConfig, instruction: str | None) -> Prepared:
        """Load the data and build the requests and scorer for this task."""
        return _PREPARE[self.kind](self, self.load(cfg.data_dir, cfg.limit), instruction, cfg)


METRIC_LABELS = {
    "cosine_spearman": "Spearman (cosine)",
    # MTEB's main score of pair classification: the best AP of cosine, dot, euclidean, manhattan
    "max_ap": "max average precision",
    "accuracy": "accuracy",
    "v_measure": "V-measure",
    "ndcg_at_10": "nDCG@10",
}


# --------------------------------------------------------------------------- per kind
def _prepare_pairs(task: Task, data: d.Pairs, instruction: str | None,
                   cfg: EvalConfig) -> Prepared:
    def score(v: dict[str, np.ndarray]) -> dict[str, Any]:
        if task.kind == "sts":
            return m.sts_scores(v["texts1"], v["texts2"], data.gold)
        return m.pair_classification_scores(v["texts1"], v["texts2"], data.gold)

    return Prepared([Request("texts1", data.texts1, instruction),
                     Request("texts2", data.texts2, instruction)], score,
                    {"pairs": len(data.gold)})


def _prepare_classification(task: Task, data: d.Labelled, instruction: str | None,
                            cfg: EvalConfig) -> Prepared:
    experiments = m.undersample(data.train_labels, cfg.samples_per_label, cfg.n_experiments,
                                cfg.seed)
    # only the training rows some experiment uses are embedded: far fewer than the train set
    used = np.unique(np.concatenate(experiments))
    position = {int(r): i for i, r in enumerate(used)}
    local = [np.asarray([position[int(r)] for r in rows], dtype=np.int64) for rows in experiments]
    labels = [data.train_labels[int(r)] for r in used]

    def score(v: dict[str, np.ndarray]) -> dict[str, Any]:
        return m.classification_scores(v["train"], labels, v["test"], data.test_labels, local,
                                       seed=cfg.seed, max_iter=cfg.max_iter)

    # said of a subset: the full intents data has one such label itself (3 of 5,000 test
    # texts), as MTEB scores it
    unseen = set(data.test_labels) - set(data.train_labels)
    warnings = [f"{len(unseen)} of the {len(set(data.test_labels))} test labels have no "
                f"training text in this subset (--limit): their "
                f"{sum(t in unseen for t in data.test_labels)} test texts cannot be classified "
                "right"] if unseen and cfg.limit is not None else []
    return Prepared([Request("train", [data.train_texts[int(r)] for r in used], instruction),
                     Request("test", data.test_texts, instruction)], score,
                    {"train_used": len(used), "train": len(data.train_texts),
                     "test": len(data.test_texts), "labels": len(set(data.test_labels))},
                    warnings)


def _prepare_clustering(task: Task, data: d.Labelled, instruction: str | None,
                        cfg: EvalConfig) -> Prepared:
    def score(v: dict[str, np.ndarray]) -> dict[str, Any]:
        return m.clustering_scores(v["texts"], data.test_labels,
                                   n_bootstrap=cfg.clustering_bootstraps,
                                   sample_size=cfg.clustering_sample_size, seed=cfg.seed)

    labels = len(set(data.test_labels))
    # V-measure of clusters of about one text each is near 1 whatever the vectors
    warnings = [f"the {len(data.test_texts)} texts hold {labels} labels, fewer than two texts "
                "a label: the V-measure says little of the model"
                + (" (a larger --limit)" if cfg.limit is not None else "")
                ] if 2 * labels > len(data.test_texts) else []
    return Prepared([Request("texts", data.test_texts, instruction)], score,
                    {"texts": len(data.test_texts), "labels": labels}, warnings)


def _prepare_retrieval(task: Task, data: d.Retrieval, instruction: str | None,
                       cfg: EvalConfig) -> Prepared:
    def score(v: dict[str, np.ndarray]) -> dict[str, Any]:
        return m.retrieval_scores(v["queries"], v["docs"], data.query_ids, data.doc_ids,
                                  data.qrels, sorted({*cfg.retrieval_ks, 10}))

    return Prepared([Request("queries", data.queries, instruction),
                     Request("docs", data.docs, None)], score,
                    {"queries": len(data.queries), "docs": len(data.docs)})


_PREPARE: dict[str, Callable[..., Prepared]] = {
    "sts": _prepare_pairs,
    "pair": _prepare_pairs,
    "classification": _prepare_classification,
    "clustering": _prepare_clustering,
    "retrieval": _prepare_retrieval,
}


# --------------------------------------------------------------------------- registry
def _sts(lang: str) -> Callable[[Path, int | None], d.Pairs]:
    return lambda root, limit: d.load_sts(root, lang, "test", limit)


def _intents(lang: str) -> Callable[[Path, int | None], d.Labelled]:
    return lambda root, limit: d.load_intents(root, lang, limit)


def _xquad(q: str, doc: str) -> Callable[[Path, int | None], d.Retrieval]:
    return lambda root, limit: d.load_xquad(root, q, doc, limit)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sts-en", "sts", "en", "cosine_spearman",
         "STS-B English test (MTEB STSBenchmark)", SIMILAR, _sts("en")),
    Task("sts-ru", "sts", "ru", "cosine_spearman",
         "STS-B Russian test (MTEB STSBenchmarkMultilingualSTS ru)", SIMILAR, _sts("ru")),
    Task("paraphrase-ru", "pair", "ru", "max_ap",
         "ParaPhraser gold, paraphrase (precise or near) vs not", SIMILAR, d.load_paraphraser),
    Task("sentiment-ru", "classification", "ru", "accuracy",
         "SentiRuEval-2016 tweets, 3 classes", SENTIMENT, d.load_sentiment),
    Task("intents-ru", "classification", "ru", "accuracy",
         "NLU-Evaluation-Data intents (ru translation), 68 classes", INTENT, _intents("ru")),
    Task("intents-en", "classification", "en", "accuracy",
         "NLU-Evaluation-Data intents (en original), 68 classes", INTENT, _intents("en")),
    Task("intents-clustering-ru", "clustering", "ru", "v_measure",
         "Intents test set clustered into 68 groups (ru)", INTENT_CLUSTER, _intents("ru")),
    Task("intents-clustering-en", "clustering", "en", "v_measure",
         "Intents test set clustered into 68 groups (en)", INTENT_CLUSTER, _intents("en")),
    Task("xquad-ru", "retrieval", "ru", "ndcg_at_10",
         "XQuAD questions -> paragraphs, Russian", QA, _xquad("ru", "ru")),
    Task("xquad-en", "retrieval", "en", "ndcg_at_10",
         "XQuAD questions -> paragraphs, English", QA, _xquad("en", "en")),
    Task("xquad-ru-en", "retrieval", "ru-en", "ndcg_at_10",
         "XQuAD Russian questions -> English paragraphs", QA, _xquad("ru", "en")),
    Task("xquad-en-ru", "retrieval", "en-ru", "ndcg_at_10",
         "XQuAD English questions -> Russian paragraphs", QA, _xquad("en", "ru")),
]}


def select(names: tuple[str, ...] | list[str]) -> list[Task]:
    """Tasks by name (all when empty); a name that is no task may be a kind (``retrieval``) or a
    prefix (``xquad``, ``intents``)."""
    if not names:
        return list(TASKS.values())
    chosen: dict[str, Task] = {}
    for name in names:
        hits = [TASKS[name]] if name in TASKS else [
            t for t in TASKS.values() if t.kind == name or t.name.startswith(name + "-")]
        if not hits:
            raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
        chosen.update((t.name, t) for t in hits)
    return list(chosen.values())


def split_instructions(instructions: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Instruction overrides split by who reads them: the embedding tasks' (a model that takes
    instructions) and the others, reranking tasks' (their reranker, whatever the model)."""
    embedding = {k: v for k, v in instructions.items() if k in TASKS}
    return embedding, {k: v for k, v in instructions.items() if k not in embedding}
