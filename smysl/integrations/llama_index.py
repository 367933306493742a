"""LlamaIndex adapter: any smysl model as
``llama_index.core.base.embeddings.base.BaseEmbedding``.

>>> from smysl.integrations.llama_index import SmyslEmbedding
>>> emb = SmyslEmbedding("Qwen/Qwen3-Embedding-0.6B", dimensions=256)    # or a BaseEmbedder
>>> emb.get_query_embedding("как устроен поиск?")
>>> emb.get_text_embedding_batch(["Поиск ищет по смыслу."])

Needs the ``llamaindex`` extra (``llama-index-core``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from smysl.base import BaseEmbedder
from smysl.integrations import AdapterConfig, embed_documents, embed_queries, open_model, require

_base = require("llama_index.core.base.embeddings.base", "llamaindex")
PrivateAttr = require("pydantic", "llamaindex").PrivateAttr


class SmyslEmbedding(_base.BaseEmbedding):  # type: ignore[name-defined]
    """Queries (``get_query_embedding``) -> smysl's ``embed_queries`` with instruction
    ``task``; texts (``get_text_embedding[_batch]``, what indexes store) -> ``embed_documents``.

    ``model`` is a loaded :class:`~smysl.base.BaseEmbedder` or a model string for
    :func:`smysl.load` (``load_kwargs``: its options). ``embed_batch_size`` (texts per call into
    smysl, which plans its own forward passes) defaults to 256.
    """

    _model: Any = PrivateAttr()
    _config: AdapterConfig = PrivateAttr()
    _owned: bool = PrivateAttr()

    def __init__(self, model: str | BaseEmbedder, *, dimensions: int | None = None,
                 task: str | None = None, truncate: bool = False, embed_batch_size: int = 256,
                 **load_kwargs: Any) -> None:
        loaded = open_model(model, load_kwargs)
        super().__init__(model_name=loaded.name, embed_batch_size=embed_batch_size)
        self._model = loaded
        self._owned = not isinstance(model, BaseEmbedder)
        self._config = AdapterConfig(dimensions=dimensions, task=task, truncate=truncate)

    @classmethod
    def class_name(cls) -> str:
        return "SmyslEmbedding"

    @property
    def model(self) -> BaseEmbedder:
        """The wrapped smysl model."""
        loaded: BaseEmbedder = self._model
        return loaded

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed_queries(self._model, [query], self._config)[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return embed_documents(self._model, [text], self._config)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return embed_documents(self._model, list(texts), self._config)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def close(self) -> None:
        if self._owned:
            self._model.close()
