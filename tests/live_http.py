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
def uvicorn_thread(app: Any, port: int, *, grace_s: float = 10, log_level: str = "warning"
                   ) -> Iterator[tuple[Any, threading.Thread]]:
    """Run ``app`` under uvicorn on 127.0.0.1:``port`` in a thread; yields (the uvicorn
    ``Server``, its thread). Tests of shutdown set ``server.should_exit`` themselves (what
    SIGTERM does); the server is stopped on exit either way."""
    import uvicorn

    from smysl.server.app import http_protocol

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level,
                                           timeout_graceful_shutdown=grace_s,
                                           http=http_protocol()))  # serve()'s
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield server, thread
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def live_server(embedder: BaseEmbedder | None, reranker: Any = None, **config: Any
                ) -> Iterator[str]:
    """Run what ``smysl serve`` runs (:func:`smysl.server.app.serving_app`: the embedder and/or
    a reranker, as ``create_app`` takes them) under uvicorn on a free loopback port in a
    thread; yields the base URL."""
    pytest.importorskip("fastapi")
    pytest.importorskip("prometheus_client")
    from smysl.server import ServerConfig
    from smysl.server.app import serving_app

    cfg = ServerConfig(host="127.0.0.1", port=free_port(), **config)
    with uvicorn_thread(serving_app(embedder, cfg, reranker=reranker)[0], cfg.port):
        yield f"http://{cfg.host}:{cfg.port}"
