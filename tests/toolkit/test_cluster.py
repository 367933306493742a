"""Clustering: k-means equals scikit-learn on the same vectors; estimated k; HDBSCAN; centres."""

from __future__ import annotations

import numpy as np
import pytest

from smysl.toolkit.cluster import ClusterConfig, cluster_texts, cluster_vectors
from toolkit.helpers import unit_rows

pytest.importorskip("sklearn")


def test_kmeans_matches_sklearn_and_representatives_are_central() -> None:
    from sklearn.cluster import KMeans

    x = unit_rows(400, 32, seed=2, clusters=6)
    res = cluster_vectors(x, ClusterConfig(k=6, representatives=4))
    ref = KMeans(n_clusters=6, n_init=4, random_state=0).fit_predict(x)
    assert res.labels.tolist() == ref.tolist() and res.k == 6
    assert sum(c.size for c in res.clusters) == 400
    assert [c.size for c in res.clusters] == sorted((c.size for c in res.clusters), reverse=True)
    for c in res.clusters:
        members = np.flatnonzero(res.labels == c.label)
        centre = x[members].mean(0)
        sims = x[members] @ centre
        assert set(c.representatives) <= set(members.tolist())
        best = np.sort(sims)[::-1][:4]
        np.testing.assert_allclose(np.sort(x[c.representatives] @ centre)[::-1], best,
                                   rtol=1e-5)


def test_estimated_k_and_hdbscan_find_planted_clusters() -> None:
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 16)) * 4
    truth = np.repeat(np.arange(5), 60)
    x = centres[truth] + rng.normal(size=(300, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    est = cluster_vectors(x, ClusterConfig(k=None, k_max=9))
    assert est.k == 5 and set(est.silhouettes) == set(range(2, 10))
    assert adjusted_rand_score(truth, est.labels) > 0.95
    dense = cluster_vectors(x, ClusterConfig(method="hdbscan", min_cluster_size=10))
    kept = dense.labels >= 0
    assert dense.k == 5 and kept.mean() > 0.8
    assert adjusted_rand_score(truth[kept], dense.labels[kept]) > 0.95


def test_cluster_texts_uses_clustering_instruction(tiny) -> None:
    texts = [f"text {i}" for i in range(12)]
    res = cluster_texts(tiny, texts, ClusterConfig(k=3))
    direct = cluster_vectors(tiny.embed(texts, instruction="clustering"), ClusterConfig(k=3))
    assert res.labels.tolist() == direct.labels.tolist()
    with pytest.raises(ValueError, match="at least two"):
        cluster_vectors(unit_rows(1, 8), ClusterConfig(k=1))


def test_estimated_k_skips_degenerate_k_and_falls_back_to_one_cluster() -> None:
    """Near-identical vectors: a k that k-means cannot fill (fewer distinct clusters than k) has
    no silhouette and is skipped, instead of sklearn's "Number of labels is 1" aborting the
    estimate; with no k left the texts are one cluster."""
    same = np.repeat(unit_rows(1, 16, seed=4), 12, axis=0)
    one = cluster_vectors(same, ClusterConfig(k=None, k_max=5))
    assert one.k == 1 and one.silhouettes == {} and set(one.labels.tolist()) == {0}
    two = np.vstack([same, np.repeat(unit_rows(1, 16, seed=5), 8, axis=0)])
    est = cluster_vectors(two, ClusterConfig(k=None, k_max=5))
    assert est.k == 2 and set(est.silhouettes) == {2}
    assert est.labels.tolist() == [est.labels[0]] * 12 + [est.labels[12]] * 8


def test_bad_vectors_and_settings_are_refused_and_few_texts_are_one_cluster() -> None:
    """A NaN row was made a zero vector and clustered; settings a method ignores or cannot
    take were sklearn's errors or silently dropped; two texts and an estimated k were an
    error where the docs promise one cluster."""
    x = unit_rows(12, 8, seed=1)
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        cluster_vectors(bad, ClusterConfig(k=2))
    with pytest.raises(ValueError, match=r"2-D array"):
        cluster_vectors(x[0], ClusterConfig(k=2))
    for kwargs, says in (({"method": "hdbscan", "k": 5}, "k is for k-means"),
                         ({"k_max": 1}, r"k_max must be >= k_min \(2\), got 1"),
                         ({"min_cluster_size": 1}, "min_cluster_size must be >= 2"),
                         ({"single_cluster": True}, "single_cluster is for HDBSCAN"),
                         ({"method": "hdbscan", "single_cluster": "no"},
                          "single_cluster must be True or False"),
                         ({"representatives": -1}, "representatives must be >= 0"),
                         ({"seed": -1}, r"seed must be in \[0, 2\*\*32\), got -1"),
                         ({"seed": 1 << 32}, r"seed must be in \[0, 2\*\*32\)"),
                         ({"method": "dbscan"}, "unknown method")):
        with pytest.raises(ValueError, match=says):
            ClusterConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"min_cluster_size \(20\) is larger than the number"):
        cluster_vectors(x, ClusterConfig(method="hdbscan", min_cluster_size=20))
    two = cluster_vectors(x[:2], ClusterConfig())
    assert two.k == 1 and two.labels.tolist() == [0, 0]


def test_hdbscan_keeps_one_group_as_a_cluster_when_asked() -> None:
    """Ten copies of one text: HDBSCAN never returns one cluster alone, so all were noise;
    ``single_cluster`` keeps the group (and still leaves the outliers as noise)."""
    same = np.tile(unit_rows(1, 8, seed=3), (10, 1))
    x = np.vstack([same, unit_rows(3, 8, seed=4)])
    plain = cluster_vectors(x, ClusterConfig(method="hdbscan"))
    assert (plain.labels == -1).all() and plain.clusters == []
    kept = cluster_vectors(x, ClusterConfig(method="hdbscan", single_cluster=True))
    assert kept.labels.tolist() == [0] * 10 + [-1] * 3
    assert [c.size for c in kept.clusters] == [10]
    alike = cluster_vectors(same, ClusterConfig(method="hdbscan", single_cluster=True))
    assert alike.labels.tolist() == [0] * 10


@pytest.mark.parametrize("k", [None, 3])
def test_without_scikit_learn_clustering_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                         k: int | None) -> None:
    """estimate_k (k=None) imported sklearn bare (a ModuleNotFoundError), and k-means said
    "supervised classification needs scikit-learn"."""
    import builtins
    from typing import Any

    real_import = builtins.__import__

    def blocked(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(ImportError, match=r"clustering needs scikit-learn: .*smysl\[toolkit\]"):
        cluster_vectors(unit_rows(20, 8),
                        ClusterConfig(k=k))
