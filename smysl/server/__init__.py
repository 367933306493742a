"""The embedding server: OpenAI-, Ollama- and TEI-compatible HTTP APIs over any
:class:`~smysl.base.BaseEmbedder`, with dynamic batching, backpressure, auth and metrics.

>>> from smysl.server import create_app, ServerConfig    # doctest: +SKIP
>>> app = create_app(embedder, ServerConfig(api_key="k"))  # doctest: +SKIP

Needs the ``server`` extra: ``pip install 'smysl[server]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smysl.server.config import ServerConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from smysl.base import BaseEmbedder
    from smysl.rerank import BaseReranker

__all__ = ["ServerConfig", "create_app", "serve"]

_HINT = "the server needs its extra: pip install 'smysl[server]'"


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import orjson  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{_HINT} (missing {e.name})") from e


def create_app(embedder: BaseEmbedder | None, config: ServerConfig | None = None, *,
               reranker: BaseReranker | None = None) -> FastAPI:
    """Build the ASGI app for ``embedder`` and/or ``reranker`` (a
    :class:`~smysl.rerank.BaseReranker`); see
    :func:`smysl.server.app.create_app`."""
    _require()
    from smysl.server.app import create_app as _create

    return _create(embedder, config, reranker=reranker)


def serve(embedder: BaseEmbedder | None, config: ServerConfig, *,
          ready: Callable[[str, int], None] | None = None, **uvicorn_options: Any) -> int:
    """Run the server with uvicorn until interrupted; ``ready(host, port)`` is called once the
    port is bound; ``reranker=`` adds the rerank routes. Returns the process exit status; see
    :func:`smysl.server.app.serve`."""
    _require()
    from smysl.server.app import serve as _serve

    return _serve(embedder, config, ready=ready, **uvicorn_options)
