"""Metric functions against scikit-learn / scipy references and MTEB's definitions."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, ndcg_score

from smysl.eval import metrics as m
from smysl.pooling import l2_normalize


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    return l2_normalize(rng.standard_normal((n, d)))


def test_sts_scores_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = _unit(rng, 50), _unit(rng, 50)
    gold = rng.uniform(0, 5, 50)
    cos = (a.astype(np.float64) * b).sum(1)
    out = m.sts_scores(a, b, gold)
    assert out["cosine_spearman"] == pytest.approx(spearmanr(gold, cos).statistic, abs=1e-6)
    assert out["cosine_pearson"] == pytest.approx(pearsonr(gold, cos).statistic, abs=1e-6)
    # Spearman is invariant to MTEB's 0-5 -> 0-1 rescaling of the gold scores
    assert m.sts_scores(a, b, gold / 5)["cosine_spearman"] == pytest.approx(out["cosine_spearman"])


def _brute_best(scores: np.ndarray, labels: np.ndarray, metric) -> float:  # type: ignore[no-untyped-def]
    # every "top i rows are positive" split, i = 1..n-1, as MTEB sweeps them
    order = np.argsort(-scores, kind="stable")
    best = 0.0
    for i in range(1, len(scores)):
        pred = np.zeros(len(scores), dtype=int)
        pred[order[:i]] = 1
        best = max(best, metric(labels, pred))
    return best


def test_best_accuracy_and_f1_match_a_threshold_sweep() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80)
    scores = labels * 0.5 + rng.standard_normal(80)
    acc, t = m.best_accuracy(scores, labels)
    assert acc == pytest.approx(_brute_best(scores, labels, accuracy_score))
    assert accuracy_score(labels, (scores > t).astype(int)) == pytest.approx(acc)
    f1, precision, recall, t = m.best_f1(scores, labels)
    assert f1 == pytest.approx(_brute_best(scores, labels, f1_score))
    pred = (scores > t).astype(int)
    assert f1_score(labels, pred) == pytest.approx(f1)
    assert 2 * precision * recall / (precision + recall) == pytest.approx(f1)


def test_pair_classification_ap_is_max_over_similarities() -> None:
    rng = np.random.default_rng(2)
    a = _unit(rng, 60)
    labels = rng.integers(0, 2, 60)
    # positives get a near copy, negatives a random vector
    b = l2_normalize(np.where(labels[:, None] == 1, a + 0.7 * _unit(rng, 60), _unit(rng, 60)))
    out = m.pair_classification_scores(a, b, labels.astype(float))
    cos = (a.astype(np.float64) * b).sum(1)
    assert out["cosine"]["ap"] == pytest.approx(average_precision_score(labels, cos))
    manhattan = -np.abs(a.astype(np.float64) - b).sum(1)
    assert out["manhattan"]["ap"] == pytest.approx(average_precision_score(labels, manhattan))
    assert out["max_ap"] == max(out[k]["ap"] for k in ("cosine", "dot", "euclidean", "manhattan"))
    assert out["max_ap"] > 0.8  # the signal is there
    # distance thresholds are distances (MTEB's), not their negation: pairs closer than the
    # threshold are called positive, and that accuracy is the one reported
    euclid = np.linalg.norm(a.astype(np.float64) - b, axis=1)
    t = out["euclidean"]["accuracy_threshold"]
    assert t > 0
    assert np.mean((euclid < t) == (labels == 1)) == pytest.approx(out["euclidean"]["accuracy"])


def _mteb_undersample(labels: list[str], per_label: int, n: int, seed: int) -> list[list[int]]:
    # MTEB's _undersample_data written out literally
    idxs = list(range(len(labels)))
    out = []
    for _ in range(n):
        np.random.RandomState(seed).shuffle(idxs)
        counter: dict[str, int] = defaultdict(int)
        rows = []
        for i in idxs:
            if counter[labels[i]] < per_label:
                rows.append(i)
                counter[labels[i]] += 1
        out.append(rows)
    return out


def test_undersample_follows_mteb() -> None:
    labels = [str(i % 5) for i in range(103)]
    got = m.undersample(labels, 8, 4, seed=42)
    want = _mteb_undersample(labels, 8, 4, 42)
    assert [list(g) for g in got] == want
    assert all(len(g) == 40 for g in got)
    assert len({tuple(sorted(g)) for g in got}) == 4  # the permutations compound


def test_classification_scores_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((4, 16)) * 2
    y_train = [str(i % 4) for i in range(200)]
    y_test = [str(i % 4) for i in range(100)]
    x_train = np.stack([centers[int(c)] for c in y_train]) + rng.standard_normal((200, 16))
    x_test = np.stack([centers[int(c)] for c in y_test]) + rng.standard_normal((100, 16))
    experiments = m.undersample(y_train, 8, 3, seed=42)
    out = m.classification_scores(x_train, y_train, x_test, y_test, experiments, seed=42)
    accs = []
    for rows in experiments:
        clf = LogisticRegression(max_iter=100, random_state=42)
        clf.fit(x_train[rows], [y_train[i] for i in rows])
        accs.append(accuracy_score(y_test, clf.predict(x_test)))
    assert out["accuracy"] == pytest.approx(np.mean(accs))
    assert len(out["scores_per_experiment"]) == 3
    assert out["accuracy"] > 0.8


def test_clustering_v_measure() -> None:
    rng = np.random.default_rng(4)
    labels = [str(i % 6) for i in range(600)]
    centers = _unit(rng, 6, 32) * 10
    x = np.stack([centers[int(c)] for c in labels]) + 0.3 * rng.standard_normal((600, 32))
    out = m.clustering_scores(x, labels, n_bootstrap=3, sample_size=300, seed=42)
    assert out["v_measure"] > 0.95 and len(out["v_measures"]) == 3
    noise = m.clustering_scores(rng.standard_normal((600, 32)), labels, n_bootstrap=3,
                                sample_size=300, seed=42)
    assert noise["v_measure"] < 0.2
    again = m.clustering_scores(x, labels, n_bootstrap=3, sample_size=300, seed=42)
    assert again["v_measures"] == out["v_measures"]  # seeded


def test_retrieval_scores_match_references() -> None:
    rng = np.random.default_rng(5)
    d = _unit(rng, 30)
    q = l2_normalize(d[:12] + 0.9 * _unit(rng, 12))  # query i is about document i
    doc_ids = [f"d{i}" for i in range(30)]
    query_ids = [f"q{i}" for i in range(12)]
    qrels = {f"q{i}": {f"d{i}"} for i in range(12)}
    qrels["q0"] = {"d0", "d29"}  # one query with two relevant documents
    out = m.retrieval_scores(q, d, query_ids, doc_ids, qrels, ks=(1, 5, 10))
    sims = q @ d.T
    truth = np.zeros_like(sims)
    for i, qid in enumerate(query_ids):
        for doc in qrels[qid]:
            truth[i, doc_ids.index(doc)] = 1
    for k in (1, 5, 10):
        assert out[f"ndcg_at_{k}"] == pytest.approx(ndcg_score(truth, sims, k=k), abs=1e-6)
        top = np.argsort(-sims, axis=1)[:, :k]
        recall = np.mean([truth[i, top[i]].sum() / truth[i].sum() for i in range(12)])
        assert out[f"recall_at_{k}"] == pytest.approx(recall)
    ranks = [next((r + 1 for r, j in enumerate(np.argsort(-sims[i])) if truth[i, j]), None)
             for i in range(12)]
    mrr10 = np.mean([1 / r if r is not None and r <= 10 else 0 for r in ranks])
    assert out["mrr_at_10"] == pytest.approx(mrr10)
    assert 0 < out["ndcg_at_10"] < 1


def _tied_run() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    # one-hot documents, so each query's row of scores is its similarities; ids out of order
    doc_ids = ["d2", "d10", "d1", "x", "d3", "a"]
    scores = [[0.5, 0.5, 0.5, 0.1, 0.5, 0.2],  # q1: four-way tie
              [0.3, 0.9, 0.3, 0.3, 0.0, 0.3],  # q2: d10, then a tie of four
              [0.7, 0.7, 0.1, 0.2, 0.3, 0.4],  # q3: judged, no relevant document
              [0.2] * 6]                       # q4: not in the qrels
    return (np.asarray(scores, dtype=np.float32), np.eye(6, dtype=np.float32), doc_ids,
            ["q1", "q2", "q3", "q4"])


def test_ties_are_broken_by_doc_id_descending_as_pytrec_eval_does() -> None:
    q, d, doc_ids, _ = _tied_run()
    top = m.top_documents(q, d, doc_ids, 6)
    assert top[0] == ["d3", "d2", "d10", "d1", "a", "x"]  # string order, not corpus order
    assert top[1] == ["d10", "x", "d2", "d1", "a", "d3"]


def test_retrieval_scores_equal_pytrec_eval_on_ties_and_unjudged_queries() -> None:
    q, d, doc_ids, query_ids = _tied_run()
    qrels = {"q1": {"d1", "a"}, "q2": {"d2"}, "q3": set()}
    out = m.retrieval_scores(q, d, query_ids, doc_ids, qrels, ks=(1, 3, 5, 10))
    # pytrec-eval-terrier 0.5.11 (ndcg_cut, map_cut, recall, recip_rank) on this run: q3 and
    # q4 are not evaluated, so every mean is over q1 and q2
    want = {"ndcg_at_1": 0.0, "ndcg_at_3": 0.25, "ndcg_at_10": 0.5006329176709435,
            "map_at_3": 1 / 6, "map_at_10": 0.32916666666666666, "recall_at_1": 0.0,
            "recall_at_3": 0.5, "recall_at_5": 1.0, "mrr_at_10": 0.29166666666666663}
    assert {k: out[k] for k in want} == pytest.approx(want, abs=1e-9)


def test_ranking_scores_skip_queries_without_a_relevant_document() -> None:
    judged = m.ranking_scores([["a", "b"]], ["q1"], {"q1": {"a"}}, ks=(1, 10))
    mixed = m.ranking_scores([["a", "b"], ["a", "b"], ["b"]], ["q1", "q2", "q3"],
                             {"q1": {"a"}, "q3": set()}, ks=(1, 10))
    assert mixed == judged and mixed["ndcg_at_10"] == mixed["mrr_at_1"] == 1.0
    none = m.ranking_scores([["a"]], ["q"], {}, ks=(10,))
    assert set(none) == {"ndcg_at_10", "recall_at_10", "mrr_at_10", "map_at_10"}
    assert all(np.isnan(v) for v in none.values())


def test_cosine_is_mteb_s_so_identical_texts_tie() -> None:
    """MTEB scores pairs with 1 - paired_cosine_distances: identical rows give exactly 1 and tie.
    A dot product over norms gave 1 +- 2e-16 and ranked them by rounding noise (Spearman
    0.0911 against MTEB's 0.0865 with 50 identical pairs of 300)."""
    from sklearn.metrics.pairwise import paired_cosine_distances

    rng = np.random.default_rng(3)
    a = l2_normalize(rng.standard_normal((300, 48)).astype(np.float32))
    b = l2_normalize(rng.standard_normal((300, 48)).astype(np.float32))
    b[:50] = a[:50]
    gold = rng.uniform(0, 5, 300)
    mteb = 1 - paired_cosine_distances(a, b)
    assert np.array_equal(m._cosine(a, b), mteb)
    got = m.sts_scores(a, b, gold)
    assert got["cosine_spearman"] == pytest.approx(spearmanr(mteb, gold)[0], abs=1e-12)
    pairs = m.pair_classification_scores(a, b, (gold > 2.5).astype(int))
    want = average_precision_score((gold > 2.5).astype(int),
                                   1 - paired_cosine_distances(a.astype(np.float64),
                                                               b.astype(np.float64)))
    assert pairs["cosine"]["ap"] == pytest.approx(want, abs=1e-12)


def test_a_ranking_naming_a_document_twice_is_refused() -> None:
    """It was counted twice (recall 1.5, MAP 1.5); a pytrec_eval run cannot hold it."""
    with pytest.raises(ValueError, match="query 'q1' names document 'a' twice"):
        m.ranking_scores([["a", "b"], ["a", "c", "a"]], ["q0", "q1"], {"q1": {"a"}})


def test_cosine_of_float16_rows_is_taken_in_float64_as_sklearn_does() -> None:
    from sklearn.metrics.pairwise import paired_cosine_distances

    rng = np.random.default_rng(5)
    a = (rng.standard_normal((20, 1024)) * 20).astype(np.float16)
    b = (rng.standard_normal((20, 1024)) * 20).astype(np.float16)
    np.testing.assert_allclose(m._cosine(a, b), 1 - paired_cosine_distances(a, b), atol=1e-12)
    assert np.all(np.abs(m._cosine(a, b)) < 0.5)  # float16 overflowed: 1.0 for every pair
