"""Server test helpers: a generic (non-engine) backend and a live uvicorn server on loopback."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from smysl.base import BaseEmbedder, Progress
from smysl.server import ServerConfig, create_app


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(embedder: BaseEmbedder, **config: Any) -> Iterator[str]:
    """Run the app under uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    cfg = ServerConfig(host="127.0.0.1", port=free_port(), **config)
    app = create_app(embedder, cfg)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{cfg.host}:{cfg.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
