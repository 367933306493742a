"""Adapters that let other frameworks use any smysl model (local engine, ``st:``, providers,
a ``smysl serve`` behind ``smysl:URL``): :mod:`smysl.integrations.langchain`
(``SmyslEmbeddings``) and :mod:`smysl.integrations.llama_index` (``SmyslEmbedding``).

Each adapter sends queries through :meth:`~smysl.base.BaseEmbedder.embed_queries` (with the
instruction) and documents through :meth:`~smysl.base.BaseEmbedder.embed_documents`, so the
vectors are exactly smysl's. The frameworks are optional: importing an adapter module without
its package raises an ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smysl.base import BaseEmbedder


@dataclass(frozen=True)
class AdapterConfig:
    """How an adapter embeds.

    Attributes:
        dimensions: Matryoshka output size for queries and documents alike (None: native).
        task: Query instruction or preset name (None: the model's default task).
        truncate: Cut over-long inputs to the model's limit instead of raising.
    """

    dimensions: int | None = None
    task: str | None = None
    truncate: bool = False


def require(module: str, extra: str) -> ModuleType:
    """Import an adapter's framework, or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"this adapter needs {module.split('.')[0]}: "
                          f"pip install 'smysl[{extra}]'") from e


def open_model(model: str | BaseEmbedder, load_kwargs: dict[str, Any]) -> BaseEmbedder:
    """``model`` itself, or :func:`smysl.load` of a model string with ``load_kwargs``."""
    from smysl.base import BaseEmbedder
    from smysl.registry import load

    if isinstance(model, BaseEmbedder):
        if load_kwargs:
            raise TypeError(f"options {sorted(load_kwargs)} apply only when model is a string")
        return model
    return load(model, **load_kwargs)


def check_config(model: BaseEmbedder, cfg: AdapterConfig) -> AdapterConfig:
    """``cfg`` once the model accepts it: a bad size, task or flag fails when the adapter is
    made, not at the first document of an ingestion run."""
    from smysl.base import check_flag

    check_flag(cfg.truncate, "truncate")  # here, not at the first document
    # Both checks are smysl's own, with their messages; neither sends a request. An empty
    # embed checks dimensions as every call does, where the width is known without one.
    model.embed([], dimensions=cfg.dimensions)
    model.choose_instruction(cfg.task, role="query")
    return cfg


def check_text_list(texts: object, method: str, instead: str) -> None:
    """A framework's batch method given one string: ``list("abc")`` (or iterating it, as
    LlamaIndex's batching does) would embed three one-letter documents without a word."""
    if isinstance(texts, str):
        raise ValueError(f"{method} takes a list of texts, got one string: pass [text], or "
                         f"{instead}")


def check_text(text: object, method: str) -> None:
    """A framework's one-text method given something else: named as the caller wrote it (the
    batch check below it said ``texts[0] must be a string``, of a list never passed)."""
    if not isinstance(text, str):
        raise ValueError(f"{method} takes one text (a string), got {type(text).__name__}")


def embed_queries(model: BaseEmbedder, texts: list[str], cfg: AdapterConfig) -> list[list[float]]:
    """Query vectors (the instruction applied) as the frameworks' lists of floats."""
    rows = model.embed_queries(texts, cfg.task, dimensions=cfg.dimensions, truncate=cfg.truncate)
    out: list[list[float]] = rows.tolist()  # the same Python floats as float(x), in one C pass
    return out


def embed_documents(model: BaseEmbedder, texts: list[str],
                    cfg: AdapterConfig) -> list[list[float]]:
    """Document vectors (no instruction) as the frameworks' lists of floats."""
    rows = model.embed_documents(texts, dimensions=cfg.dimensions, truncate=cfg.truncate)
    out: list[list[float]] = rows.tolist()
    return out
