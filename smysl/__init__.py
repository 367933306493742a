"""smysl: Qwen3-Embedding, exact and fast.

>>> import smysl
>>> emb = smysl.load("Qwen/Qwen3-Embedding-0.6B")                 # doctest: +SKIP
>>> q = emb.embed_queries(["Что такое смысл?"])                   # doctest: +SKIP
>>> d = emb.embed_documents(["Смысл — это содержание."])         # doctest: +SKIP
>>> remote = smysl.load("openrouter:qwen/qwen3-embedding-8b")    # doctest: +SKIP
>>> rr = smysl.load_reranker("Qwen/Qwen3-Reranker-0.6B")         # doctest: +SKIP

Every model string goes through :func:`load` or :func:`load_reranker` (:mod:`smysl.registry`);
this package imports no torch until a local model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smysl.base import BaseEmbedder, ModelInfo, TokenLevel
from smysl.options import ModelOptions
from smysl.prompts import DEFAULT_TASK, QUERY_TEMPLATE, TASK_PRESETS
from smysl.registry import load, load_reranker
from smysl.rerank import BaseReranker, RerankerInfo

if TYPE_CHECKING:
    from smysl.qwen3.embedder import Embedder
    from smysl.qwen3.reranker import Reranker

__all__ = ["DEFAULT_TASK", "QUERY_TEMPLATE", "TASK_PRESETS", "BaseEmbedder", "BaseReranker",
           "Embedder", "ModelInfo", "ModelOptions", "Reranker", "RerankerInfo", "TokenLevel",
           "load", "load_reranker"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Embedder pulls in torch (seconds); import it on first use so `smysl --help` stays instant
    # and remote models work without torch.
    if name == "Embedder":
        from smysl.qwen3.embedder import Embedder

        return Embedder
    if name == "Reranker":  # Qwen3-Reranker on the same engine (torch, on first use)
        from smysl.qwen3.reranker import Reranker

        return Reranker
    raise AttributeError(f"module 'smysl' has no attribute {name!r}")
