"""Server test helpers: a generic (non-engine) backend and a live uvicorn server on loopback."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from live_http import free_port, live_server  # noqa: F401 - re-exported for the server tests

from smysl.base import BaseEmbedder, Progress
from smysl.server.workers import claim_port as REAL_CLAIM_PORT  # noqa: F401 - conftest patches it

T = TypeVar("T")


class HashEmbedder(BaseEmbedder):
    """A real but model-free backend: character-trigram hashing. It has no tokenizer and no
    token-level methods, like a provider, and can hold compute on a gate to create queues."""

    name = "hash-embedder"
    dimensions = 48
    min_dimensions = 8
    max_tokens = None

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[list[str]] = []
        self.entered = threading.Event()

    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for i, t in enumerate(texts):
            padded = f"  {t} "
            for j in range(len(padded) - 2):
                h = hashlib.blake2b(padded[j : j + 3].encode(), digest_size=4).digest()
                out[i, int.from_bytes(h, "little") % self.dimensions] += 1.0
            out[i, 0] += 0.5  # no all-zero rows
        return out


def errors_left_in_cycles(call: Callable[[], T]) -> tuple[T, list[str]]:
    """``call()``'s result, and the type names of the exceptions it left in reference cycles:
    held until a full collection, which a busy server rarely runs (with whatever their frames
    hold). The in-process test client's own ``EndOfStream`` is left out."""
    import gc

    gc.collect()
    gc.disable()
    try:
        result = call()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage
                if isinstance(o, BaseException) and type(o).__name__ != "EndOfStream"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return result, left
