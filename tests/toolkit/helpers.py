"""Test helpers: a counting wrapper around any embedder, vector generators, a numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smysl.base import BaseEmbedder, Progress

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


class Counting(BaseEmbedder):
    """Delegates to ``inner`` and counts every text that reaches the model."""

    def __init__(self, inner: BaseEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimensions = inner.dimensions
        self.min_dimensions = inner.min_dimensions
        self.max_tokens = inner.max_tokens
        self.instruction_aware = inner.instruction_aware
        self.default_task = inner.default_task
        self.tokenizer = getattr(inner, "tokenizer", None)
        self.calls: list[int] = []

    @property
    def embedded(self) -> int:
        return sum(self.calls)

    def format_texts(self, texts: list[str], instruction: str | None) -> list[str]:
        return self.inner.format_texts(texts, instruction)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()  # the same model, counted

    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner._embed(texts, truncate=truncate, progress=progress)

    def count_tokens(self, texts):
        return self.inner.count_tokens(texts)


class OtherWeights(Counting):
    """The same name, other weights: what only a fingerprint tells apart."""

    def fingerprint(self) -> str:
        return "0" * 32


def unit_rows(n: int, d: int, seed: int = 0, clusters: int = 0) -> np.ndarray:
    """Random unit vectors; with ``clusters``, grouped around that many centres (realistic)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if clusters:
        centres = rng.normal(size=(clusters, d)).astype(np.float32) * 2.0
        x = x + centres[rng.integers(0, clusters, n)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k by numpy: indices and scores, best first."""
    s = queries @ db.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, axis=1)
