"""LangChain adapter: any smysl model as ``langchain_core.embeddings.Embeddings``.

>>> from smysl.integrations.langchain import SmyslEmbeddings
>>> emb = SmyslEmbeddings("Qwen/Qwen3-Embedding-0.6B", dimensions=256)   # or a BaseEmbedder
>>> emb.embed_query("как устроен поиск?"), emb.embed_documents(["Поиск ищет по смыслу."])

Needs the ``langchain`` extra (``langchain-core``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from smysl.base import BaseEmbedder
from smysl.integrations import (
    AdapterConfig,
    check_config,
    check_text,
    check_text_list,
    embed_documents,
    embed_queries,
    open_model,
    require,
)

Embeddings = require("langchain_core.embeddings", "langchain").Embeddings


class SmyslEmbeddings(Embeddings):  # type: ignore[misc, valid-type]
    """``embed_query`` -> smysl's ``embed_queries`` (instruction ``task``), ``embed_documents``
    -> ``embed_documents``; vectors are unit length, ``dimensions`` long. The async methods are
    LangChain's: the same calls in its executor, off the event loop.

    ``model`` is a loaded :class:`~smysl.base.BaseEmbedder` or a model string for
    :func:`smysl.load` (``load_kwargs``: its options, e.g. ``device="cpu"``); a model loaded
    here is closed by :meth:`close`. ``dimensions``, ``task`` and ``truncate`` are checked
    here.
    """

    def __init__(self, model: str | BaseEmbedder, *, dimensions: int | None = None,
                 task: str | None = None, truncate: bool = False, **load_kwargs: Any) -> None:
        self.model = open_model(model, load_kwargs)
        self._owned = not isinstance(model, BaseEmbedder)
        try:
            self.config = check_config(self.model, AdapterConfig(
                dimensions=dimensions, task=task, truncate=truncate))
        except Exception:
            self.close()  # a model loaded for an adapter that is not made would leak
            raise

    # the settings read and assigned as attributes, each assignment checked as at
    # construction (a plain attribute set beside the config was silently ignored)
    def _configure(self, **change: Any) -> None:
        self.config = check_config(self.model, dataclasses.replace(self.config, **change))

    @property
    def dimensions(self) -> int | None:
        return self.config.dimensions

    @dimensions.setter
    def dimensions(self, value: int | None) -> None:
        self._configure(dimensions=value)

    @property
    def task(self) -> str | None:
        return self.config.task

    @task.setter
    def task(self, value: str | None) -> None:
        self._configure(task=value)

    @property
    def truncate(self) -> bool:
        return self.config.truncate

    @truncate.setter
    def truncate(self, value: bool) -> None:
        self._configure(truncate=value)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        check_text_list(texts, "embed_documents", "embed_query for a query")
        return embed_documents(self.model, list(texts), self.config)

    def embed_query(self, text: str) -> list[float]:
        check_text(text, "embed_query")
        return embed_queries(self.model, [text], self.config)[0]

    def close(self) -> None:
        """Close the model if this adapter loaded it from a string."""
        if self._owned:
            self.model.close()

    def __enter__(self) -> SmyslEmbeddings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # ``with SmyslEmbeddings(...) as e:``, as ``with smysl.load(...)``

    def __copy__(self) -> SmyslEmbeddings:
        # a copy shares the model, as it would a connection (a deep copy reached the weights
        # and failed in torch); only the adapter that loaded it closes it
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin._owned = False
        return twin

    def __deepcopy__(self, memo: dict[int, Any]) -> SmyslEmbeddings:
        return copy.copy(self)
