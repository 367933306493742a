"""Clustering on embeddings: k-means (chosen k, or k estimated by silhouette) or HDBSCAN, with
representative texts (closest to the cluster's mean direction) per cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from smysl.base import BaseEmbedder, check_flag
from smysl.pooling import l2_normalize
from smysl.toolkit._deps import require_sklearn
from smysl.toolkit.classify import embed_for
from smysl.toolkit.store import finite_rows


@dataclass(frozen=True)
class ClusterConfig:
    """Clustering settings.

    Attributes:
        method: ``"kmeans"`` or ``"hdbscan"`` (density-based; finds k itself, marks noise -1).
        k: Clusters for k-means; None estimates it by the best silhouette in ``k_min..k_max``
            (1 when no k there splits the texts, e.g. all near-identical: see
            :func:`estimate_k`).
        k_min: Smallest k tried when estimating.
        k_max: Largest k tried when estimating (capped at the number of texts - 1).
        min_cluster_size: Smallest HDBSCAN cluster.
        single_cluster: HDBSCAN may return one cluster alone (scikit-learn's
            ``allow_single_cluster``). Off, texts that form one group are all noise
            (e.g. ten copies of one text); on, that group may be kept as a cluster in
            place of a split into smaller ones.
        representatives: Texts reported per cluster.
        sample: Points the silhouette is computed on when estimating k (it is quadratic).
        seed: Random seed (k-means initialisation, silhouette sample).
        instruction: Instruction texts are embedded with; None uses the ``clustering`` preset
            on instruction-aware models and none otherwise; ``""`` forces none.
        dimensions: Matryoshka size; None is the model's native size.
        truncate: Cut texts longer than the model takes (else an error names the first).
    """

    method: Literal["kmeans", "hdbscan"] = "kmeans"
    k: int | None = None
    k_min: int = 2
    k_max: int = 30
    min_cluster_size: int = 5
    single_cluster: bool = False
    representatives: int = 3
    sample: int = 4000
    seed: int = 0
    instruction: str | None = None
    dimensions: int | None = None
    truncate: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("kmeans", "hdbscan"):
            raise ValueError(f"unknown method {self.method!r} (kmeans or hdbscan)")
        if self.method == "hdbscan" and self.k is not None:
            raise ValueError("k is for k-means: HDBSCAN finds the number of clusters itself")
        object.__setattr__(self, "single_cluster", check_flag(self.single_cluster,
                                                              "single_cluster"))
        if self.method != "hdbscan" and self.single_cluster:
            raise ValueError("single_cluster is for HDBSCAN")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.k_min < 2:
            raise ValueError(f"k_min must be >= 2, got {self.k_min}")
        if self.k is None and self.k_max < self.k_min:  # with k it is not used
            raise ValueError(f"k_max must be >= k_min ({self.k_min}), got {self.k_max}")
        if self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {self.min_cluster_size}")
        if not 0 <= self.seed < 1 << 32:  # what scikit-learn's random_state takes
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.representatives < 0:
            raise ValueError(f"representatives must be >= 0, got {self.representatives}")
        if self.sample < 2:
            raise ValueError(f"sample must be >= 2, got {self.sample}")

    def check_count(self, n: int) -> None:
        """Refuse, before anything is embedded, a clustering of ``n`` texts that cannot be."""
        if n < 2:
            raise ValueError("clustering needs at least two texts")
        if self.k is not None and self.k > n:
            raise ValueError(f"k={self.k} is more clusters than the {n} texts to cluster; "
                             f"give k <= {n}")
        if self.method == "hdbscan" and self.min_cluster_size > n:
            raise ValueError(f"min_cluster_size ({self.min_cluster_size}) is larger than the "
                             f"number of texts ({n})")


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster: its label, size and the indices of its most central members."""

    label: int
    size: int
    representatives: list[int]


@dataclass
class ClusterResult:
    """Labels per input (``-1`` is HDBSCAN noise), clusters by size, and k-estimation scores."""

    labels: np.ndarray
    clusters: list[ClusterInfo]
    silhouettes: dict[int, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.clusters)


#: k-means restarts (scikit-learn's ``n_init``), the same for each k tried and the final fit.
N_INIT = 4


def estimate_k(x: np.ndarray, config: ClusterConfig) -> tuple[int, dict[int, float]]:
    """The k in ``k_min..k_max`` with the best cosine silhouette on a sample.

    A k for which k-means finds fewer than k distinct clusters (near-identical vectors), or
    whose sample holds fewer than two, has no silhouette and is skipped; when no k has one the
    texts are a single cluster: k = 1, with no scores.
    """
    import warnings

    require_sklearn("choosing k for clustering")
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    hi = min(config.k_max, len(x) - 1)
    if hi < config.k_min:  # too few texts to split into k_min clusters with a silhouette
        return 1, {}
    # the sample silhouette_score(sample_size=..., random_state=seed) would draw, drawn once
    # here so that each k's labels can be checked on it
    sample = np.random.RandomState(config.seed).permutation(len(x))[: config.sample]
    scores: dict[int, float] = {}
    for k in range(config.k_min, hi + 1):
        with warnings.catch_warnings():  # fewer distinct clusters than k: skipped just below
            warnings.simplefilter("ignore", ConvergenceWarning)
            # the final fit's settings: the silhouette scored is that of the labels written
            labels = KMeans(n_clusters=k, n_init=N_INIT, random_state=config.seed).fit_predict(x)
        if len(np.unique(labels)) < k or not 2 <= len(np.unique(labels[sample])) < len(sample):
            continue
        scores[k] = float(silhouette_score(x[sample], labels[sample], metric="cosine"))
    return (max(scores, key=lambda k: scores[k]) if scores else 1), scores


def cluster_vectors(vectors: np.ndarray, config: ClusterConfig = ClusterConfig()
                    ) -> ClusterResult:
    """Cluster unit vectors."""
    require_sklearn("clustering")
    # a NaN row refused: l2_normalize would make it zero, and cluster it
    x = l2_normalize(finite_rows(vectors))
    config.check_count(len(x))
    silhouettes: dict[int, float] = {}
    if config.method == "kmeans":
        from sklearn.cluster import KMeans

        k = config.k
        if k is None:
            k, silhouettes = estimate_k(x, config)  # within 1..len(x) - 1
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # said below, in smysl's words
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = KMeans(n_clusters=k, n_init=N_INIT, random_state=config.seed).fit_predict(x)
        found = len(np.unique(labels))
        if found < k:  # scikit-learn warned and returned fewer clusters than asked for
            raise ValueError(f"k-means found only {found} distinct clusters for k={k}: the "
                             f"texts have fewer distinct vectors than that (repeated texts "
                             f"embed alike); ask for k <= {found}, or leave k to be estimated")
    elif config.method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        # Euclidean distance on unit vectors orders pairs exactly as cosine does.
        labels = HDBSCAN(min_cluster_size=config.min_cluster_size, copy=True,
                         allow_single_cluster=config.single_cluster).fit_predict(x)
    else:
        raise ValueError(f"unknown method {config.method!r} (kmeans or hdbscan)")
    clusters = []
    for label in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == label)
        centre = x[members].mean(axis=0)
        order = np.argsort(-(x[members] @ centre), kind="stable")[: config.representatives]
        clusters.append(ClusterInfo(int(label), len(members), members[order].tolist()))
    clusters.sort(key=lambda c: (-c.size, c.label))
    return ClusterResult(np.asarray(labels), clusters, silhouettes)


def cluster_texts(embedder: BaseEmbedder, texts: Sequence[str],
                  config: ClusterConfig = ClusterConfig(), progress: bool = False
                  ) -> ClusterResult:
    """Embed ``texts`` (with the clustering instruction where it applies) and cluster them."""
    config.check_count(len(texts))
    x = embed_for(embedder, texts, config.instruction, config.dimensions, preset="clustering",
                  progress=progress, truncate=config.truncate)
    return cluster_vectors(x, config)
