"""smysl: Qwen3-Embedding, exact and fast.

>>> from smysl import Embedder
>>> emb = Embedder.load("Qwen/Qwen3-Embedding-0.6B")        # doctest: +SKIP
>>> q = emb.embed_queries(["Что такое смысл?"])               # doctest: +SKIP
>>> d = emb.embed_documents(["Смысл — это содержание."])     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smysl.base import BaseEmbedder
from smysl.prompts import DEFAULT_TASK, QUERY_TEMPLATE, TASK_PRESETS

if TYPE_CHECKING:
    from smysl.embedder import Embedder

__all__ = ["DEFAULT_TASK", "QUERY_TEMPLATE", "TASK_PRESETS", "BaseEmbedder", "Embedder", "load"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Embedder pulls in torch (seconds); import it on first use so `smysl --help` stays instant.
    if name == "Embedder":
        from smysl.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'smysl' has no attribute {name!r}")


def load(model: str, **options: Any) -> BaseEmbedder:
    """Shorthand for :meth:`Embedder.load` (any model string: local, Hub, or ``scheme:...``)."""
    from smysl.embedder import Embedder

    return Embedder.load(model, **options)
