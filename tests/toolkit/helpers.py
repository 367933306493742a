"""Test helpers: a counting wrapper around any embedder, vector generators, a numpy reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        self.calls: list[int] = []
        self.texts: list[str] = []  # every text that reached the model, in order

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
        self.texts.extend(texts)
        return self.inner._embed(texts, truncate=truncate, progress=progress)

    def count_tokens(self, texts):
        return self.inner.count_tokens(texts)

    def text_tokens(self):
        return self.inner.text_tokens()


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


def check_reads_beside_a_writer(store: Any, x: np.ndarray, texts: list[str], reads: int) -> None:
    """Reads from eight threads at once (the server's ``/search`` runs a store's calls on
    ``--index-threads`` threads) give what they give one at a time, beside a writer of other
    rows. ``store`` holds ``x`` under ids "0".. with payloads ``{"text", "g": i % 4}``."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from smysl.toolkit.lexical import record_terms

    def read_all(i: int) -> tuple[object, ...]:
        return ([h.id for h in store.search(x[i : i + 2], 5)[0]],
                [h.id for h in store.search(x[i : i + 1], 5, where={"g": i % 4})[0]],
                [h.id for h in store.search_text([record_terms(texts[i])[-1:]], 3)[0]],
                store.count(where={"g": i % 4}), [r.id for r in store.get([str(i)])])

    want = [read_all(i) for i in range(reads)]
    barrier = threading.Barrier(8, timeout=30)
    stop = threading.Event()
    failed: list[BaseException] = []

    def writer() -> None:  # other rows, in a group of their own
        n = 0
        try:
            while not stop.is_set():
                store.upsert([f"w{n}"], -x[n % 8 : n % 8 + 1], [{"text": "writer", "g": 9}])
                n += 1
        except BaseException as e:  # the test fails with it, not a thread's warning
            failed.append(e)

    def read(i: int) -> tuple[object, ...]:
        if i < 8:
            barrier.wait()  # the first eight at once
        return read_all(i)

    w = threading.Thread(target=writer)
    w.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(read, range(reads)))
    finally:
        stop.set()
        w.join(60)
    if failed:
        raise failed[0]
    for (near, *rest), (want_near, *want_rest) in zip(got, want, strict=True):
        ours = [i for i in near if not i.startswith("w")]  # the writer's may come in
        assert ours == want_near[: len(ours)] and rest == want_rest
    assert store.count(where={"g": 9}) >= 1
