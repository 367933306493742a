"""A real ``smysl serve`` app under uvicorn on a free loopback port, for tests of any folder
(importable by name, like ``qwen_tiny``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from smysl.base import BaseEmbedder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(embedder: BaseEmbedder | None, reranker: Any = None, **config: Any
                ) -> Iterator[str]:
    """Run the app (the embedder and/or a reranker, as ``create_app`` takes them) under uvicorn
    on a free loopback port in a thread; yields the base URL."""
    pytest.importorskip("fastapi")
    pytest.importorskip("prometheus_client")
    import uvicorn

    from smysl.server import ServerConfig, create_app

    cfg = ServerConfig(host="127.0.0.1", port=free_port(), **config)
    app = create_app(embedder, cfg, reranker=reranker)
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
