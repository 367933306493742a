"""Metrics, defined as MTEB defines them so that scores compare with published MTEB results.

Inputs are unit-norm embedding rows (``smysl`` always returns them), so cosine is a dot product.
Every function is pure: embeddings and labels in, a ``dict`` of floats out.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from smysl.eval._deps import require


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine as MTEB computes it, ``1 - sklearn.metrics.pairwise.
    paired_cosine_distances``: rows normalised (a zero row left as it is), then ``1 - |a - b|^2
    / 2``, in the rows' float type (float32 or float64; others as float64, as sklearn).
    Identical rows give exactly 1, and tie, as there (a dot product over norms gave 1 +- 2e-16,
    which ordered them by rounding noise)."""
    a, b = _floats(a), _floats(b)
    d = _unit(a) - _unit(b)
    return 1 - 0.5 * np.einsum("ij,ij->i", d, d)


def _floats(x: np.ndarray) -> np.ndarray:
    # float32 and float64 as they are, anything else (float16 overflows) in float64, as
    # sklearn's check_array takes them
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]


# --------------------------------------------------------------------------- STS
def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> dict[str, float]:
    """MTEB STSEvaluator: Spearman and Pearson of the pairwise cosine against gold scores.

    The main score is ``cosine_spearman`` (rank based, so MTEB's 0-5 -> 0-1 rescaling of the
    gold scores does not change it).
    """
    stats = require("scipy.stats", "scipy")
    cos = _cosine(emb1, emb2)
    return {"cosine_spearman": float(stats.spearmanr(gold, cos).statistic),
            "cosine_pearson": float(stats.pearsonr(gold, cos).statistic)}


# --------------------------------------------------------------------------- pair classification
def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best accuracy over thresholds "score above t is positive", and that threshold.

    Same sweep as MTEB's ``find_best_acc_and_threshold``: rows sorted by score, descending; every
    prefix of 1..n-1 rows predicted positive; threshold halfway between neighbouring scores.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y == 1)[:-1]
    fp = np.cumsum(y == 0)[:-1]
    acc = (tp + (np.sum(y == 0) - fp)) / len(y)
    if len(acc) == 0:
        return 0.0, -1.0
    i = int(np.argmax(acc))  # first maximum, as MTEB's strict ">" keeps the first
    return float(acc[i]), float((s[i] + s[i + 1]) / 2)


def best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """Best F1 over thresholds (MTEB's ``find_best_f1_and_threshold``): f1, precision, recall, t."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y == 1)[:-1].astype(np.float64)
    extracted = np.arange(1, len(y))
    total = max(int(np.sum(y == 1)), 1)
    precision = tp / extracted
    recall = tp / total
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    if len(f1) == 0 or f1.max() <= 0:
        return 0.0, 0.0, 0.0, 0.0
    i = int(np.argmax(f1))
    return float(f1[i]), float(precision[i]), float(recall[i]), float((s[i] + s[i + 1]) / 2)


def pair_classification_scores(emb1: np.ndarray, emb2: np.ndarray,
                               labels: Sequence[float]) -> dict[str, Any]:
    """MTEB PairClassificationEvaluator: AP, best accuracy and best F1 for cosine, dot, euclidean
    and manhattan similarity; the main score ``max_ap`` is the best AP of the four."""
    metrics = require("sklearn.metrics", "scikit-learn")
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    # distances are negated so that "higher means more similar" holds for all four
    similarities = {
        "cosine": _cosine(a, b),
        "dot": np.einsum("ij,ij->i", a, b),
        "euclidean": -np.linalg.norm(a - b, axis=1),
        "manhattan": -np.abs(a - b).sum(axis=1),
    }
    out: dict[str, Any] = {}
    for name, sim in similarities.items():
        acc, acc_t = best_accuracy(sim, y)
        f1, precision, recall, f1_t = best_f1(sim, y)
        if name in ("euclidean", "manhattan"):  # thresholds as distances, as MTEB reports them
            acc_t, f1_t = -acc_t, -f1_t
        out[name] = {"ap": float(metrics.average_precision_score(y, sim)), "accuracy": acc,
                     "accuracy_threshold": acc_t, "f1": f1, "precision": precision,
                     "recall": recall, "f1_threshold": f1_t}
    out["cosine_ap"] = out["cosine"]["ap"]
    out["max_ap"] = max(out[n]["ap"] for n in similarities)
    out["max_accuracy"] = max(out[n]["accuracy"] for n in similarities)
    out["max_f1"] = max(out[n]["f1"] for n in similarities)
    return out


# --------------------------------------------------------------------------- classification
def undersample(labels: Sequence[str], samples_per_label: int, n_experiments: int,
                seed: int) -> list[np.ndarray]:
    """Training rows of each experiment, as MTEB's ``_undersample_data`` picks them.

    One index list is reshuffled in place before every experiment with a fresh
    ``RandomState(seed)`` (so the permutations compound), and the first ``samples_per_label``
    rows of each label in that order are kept.
    """
    idxs = list(range(len(labels)))
    picked: list[np.ndarray] = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(idxs)
        count: dict[str, int] = defaultdict(int)
        rows = []
        for i in idxs:
            if count[labels[i]] < samples_per_label:
                rows.append(i)
                count[labels[i]] += 1
        picked.append(np.asarray(rows, dtype=np.int64))
    return picked


def logistic_regression_scores(x_train: np.ndarray, y_train: Sequence[str], x_test: np.ndarray,
                               y_test: Sequence[str], *, seed: int,
                               max_iter: int = 100) -> dict[str, float]:
    """One MTEB classification experiment: ``LogisticRegression(max_iter=100)`` fitted on the
    embeddings, scored by accuracy and macro/weighted F1 on the test set."""
    linear = require("sklearn.linear_model", "scikit-learn")
    metrics = require("sklearn.metrics", "scikit-learn")
    import warnings

    clf = linear.LogisticRegression(random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():  # max_iter=100 often stops early; that is the protocol
        warnings.simplefilter("ignore", category=require("sklearn.exceptions").ConvergenceWarning)
        clf.fit(x_train, list(y_train))
    pred = clf.predict(x_test)
    return {"accuracy": float(metrics.accuracy_score(y_test, pred)),
            "f1": float(metrics.f1_score(y_test, pred, average="macro")),
            "f1_weighted": float(metrics.f1_score(y_test, pred, average="weighted"))}


def classification_scores(x_train: np.ndarray, y_train: Sequence[str], x_test: np.ndarray,
                          y_test: Sequence[str], experiments: list[np.ndarray], *, seed: int,
                          max_iter: int = 100) -> dict[str, Any]:
    """MTEB classification: the mean over ``experiments`` (row indices into the train set, from
    :func:`undersample`) of :func:`logistic_regression_scores`; main score ``accuracy``."""
    runs = []
    y = np.asarray(y_train, dtype=object)
    for rows in experiments:
        runs.append(logistic_regression_scores(x_train[rows], list(y[rows]), x_test, y_test,
                                               seed=seed, max_iter=max_iter))
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    out["accuracy_std"] = float(np.std([r["accuracy"] for r in runs]))
    out["scores_per_experiment"] = runs
    return out


# --------------------------------------------------------------------------- clustering
#: Texts per clustering sample: MTEB's ``max_documents_per_cluster`` (since 1.14).
CLUSTER_SAMPLE_SIZE = 16_384


def clustering_scores(x: np.ndarray, labels: Sequence[str], *, n_bootstrap: int = 10,
                      sample_size: int = CLUSTER_SAMPLE_SIZE, batch_size: int = 512,
                      seed: int = 42) -> dict[str, Any]:
    """MTEB clustering (``AbsTaskClustering``, ``_evaluate_clustering_bootstrapped``):
    ``n_bootstrap`` samples of ``sample_size`` rows (with replacement,
    ``random.Random(seed).choices``; MTEB's ``n_clusters`` and ``max_documents_per_cluster``),
    each clustered by MiniBatchKMeans with as many clusters as gold labels; main score is the
    mean V-measure. ``x`` holds every row to sample from (MTEB may embed a subset first)."""
    cluster = require("sklearn.cluster", "scikit-learn")
    metrics = require("sklearn.metrics", "scikit-learn")
    y = np.asarray(labels, dtype=object)
    n_clusters = len(set(labels))
    rng = random.Random(seed)
    model = cluster.MiniBatchKMeans(n_clusters=n_clusters, batch_size=batch_size,
                                    init="k-means++", n_init=1, random_state=seed)
    scores = []
    for _ in range(n_bootstrap):
        rows = rng.choices(range(len(y)), k=sample_size)
        assignment = model.fit_predict(x[rows])
        scores.append(float(metrics.v_measure_score(y[rows], assignment)))
    return {"v_measure": float(np.mean(scores)), "v_measure_std": float(np.std(scores)),
            "v_measures": scores}


# --------------------------------------------------------------------------- retrieval
def retrieval_scores(q: np.ndarray, d: np.ndarray, query_ids: Sequence[str],
                     doc_ids: Sequence[str], qrels: dict[str, set[str]],
                     ks: Sequence[int] = (1, 3, 5, 10, 100)) -> dict[str, float]:
    """Exact cosine search of every query over the corpus, scored like MTEB (pytrec_eval) with
    binary relevance: nDCG@k, recall@k, MRR@k and MAP@k averaged over the queries that have a
    relevant document (:func:`ranking_scores`); equal scores ranked as :func:`top_documents` does.

    nDCG@k = DCG@k / IDCG@k with gain 1/log2(rank+1); recall@k = relevant found in the top k /
    relevant; MRR@k = 1/rank of the first relevant document within k (0 if none); MAP@k = sum of
    precision at each relevant rank within k / relevant (trec_eval's map_cut).
    """
    return ranking_scores(top_documents(q, d, doc_ids, min(max(ks), len(doc_ids))), query_ids,
                          qrels, ks)


def top_documents(q: np.ndarray, d: np.ndarray, doc_ids: Sequence[str],
                  k: int) -> list[list[str]]:
    """Ids of each query's ``k`` most cosine-similar documents, best first (exact search).

    Equal scores are ordered by doc id, descending, as pytrec_eval/trec_eval order a run (and
    MTEB copies it): the metrics then equal pytrec_eval's on the same similarities.
    """
    sims = np.asarray(q, dtype=np.float32) @ np.asarray(d, dtype=np.float32).T
    # rank of each id in ascending string order; lexsort's last key is the primary one
    id_rank = np.empty(len(doc_ids), dtype=np.int64)
    id_rank[sorted(range(len(doc_ids)), key=doc_ids.__getitem__)] = np.arange(len(doc_ids))
    top = np.lexsort((np.broadcast_to(-id_rank, sims.shape), -sims), axis=1)[:, :k]
    return [[doc_ids[int(j)] for j in row] for row in top]


def ranking_scores(ranked: Sequence[Sequence[str]], query_ids: Sequence[str],
                   qrels: dict[str, set[str]],
                   ks: Sequence[int] = (1, 3, 5, 10, 100)) -> dict[str, float]:
    """nDCG@k, recall@k, MRR@k and MAP@k (pytrec_eval definitions) of given rankings, averaged
    over the queries that have a relevant document. ``ranked[i]`` are query ``i``'s document ids
    best first, possibly fewer than ``k`` (a reranker's candidates): a relevant document absent
    from it counts as not found, while the ideal DCG still assumes every relevant document could
    be ranked.

    Relevance is binary: a document is relevant when it is in ``qrels[query]``. A query with no
    relevant document is skipped, as pytrec_eval evaluates only the queries in the qrels (and
    MTEB divides by their count); every metric is NaN when no query has one. A ranking that
    names a document twice is a ValueError (it was counted twice: recall 1.5; a pytrec_eval run
    cannot hold it).
    """
    kmax = max(ks)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    sums: dict[str, float] = {f"{name}_at_{k}": 0.0 for k in ks
                              for name in ("ndcg", "recall", "mrr", "map")}
    judged = 0
    for qid, docs in zip(query_ids, ranked, strict=True):
        docs = list(docs)
        if len(set(docs)) != len(docs):
            twice = next(doc for n, doc in enumerate(docs) if doc in docs[:n])
            raise ValueError(f"the ranking of query {qid!r} names document {twice!r} twice")
        rel = qrels.get(qid, set())
        if not rel:
            continue
        judged += 1
        hits = np.array([doc in rel for doc in docs[:kmax]], dtype=np.float64)
        for k in ks:
            h = hits[:k]
            kk = len(h)
            ideal = discount[: min(len(rel), k)].sum()
            sums[f"ndcg_at_{k}"] += float(h @ discount[:kk] / ideal)
            sums[f"recall_at_{k}"] += float(h.sum() / len(rel))
            first = np.flatnonzero(h)
            sums[f"mrr_at_{k}"] += float(1.0 / (first[0] + 1)) if len(first) else 0.0
            precisions = np.cumsum(h) / np.arange(1, kk + 1)
            sums[f"map_at_{k}"] += float((precisions * h).sum() / len(rel))
    return {k: v / judged if judged else float("nan") for k, v in sorted(sums.items())}


def first_relevant_rank(ranked: Sequence[str], relevant: set[str]) -> int | None:
    """1-based rank of the first relevant document in ``ranked``, None when none is there."""
    return next((r for r, doc in enumerate(ranked, 1) if doc in relevant), None)
