"""Opening a :class:`~smysl.toolkit.store.VectorStore`: the one place that knows every backend.

The backends (:mod:`~smysl.toolkit.lancedb`, :mod:`~smysl.toolkit.qdrant`,
:mod:`~smysl.toolkit.postgres`, :mod:`~smysl.toolkit.memory`) build on
:mod:`smysl.toolkit.store` and never import this module; each is imported only when a store of
its kind is opened, so its client library loads on demand.
"""

from __future__ import annotations

from smysl.shown import shown_source, shown_url, split_user
from smysl.toolkit.store import StoreConfig, VectorStore


def location(config: StoreConfig) -> str:
    """Where the store is, for logs, errors and ``/ui/info``: never a password (a PostgreSQL
    DSN as ``postgres:host:port/dbname``; a URL without its user part or query)."""
    if config.backend == "postgres":
        from smysl.toolkit.postgres import place

        return f"postgres:{place(config.uri)}"
    if config.uri.startswith(("http://", "https://")):
        return shown_url(config.uri)
    if config.backend == "memory":
        return "memory:"
    if config.backend == "lancedb":  # a local path, or an object-store URI less its user part
        return split_user(config.uri)[1]
    return shown_source(f"{config.backend}:{config.uri}")


def described(config: StoreConfig) -> str:
    """The store and its table (collection), as messages name an index."""
    return f"{location(config)} table {config.table}"


def open_store(config: StoreConfig, dimensions: int | None = None, *,
               replace: bool = False) -> VectorStore:
    """Open (or, given ``dimensions``, create) the store ``config`` describes; ``replace``
    (with ``dimensions``) deletes an existing table and its metadata first, damaged or not."""
    if replace and dimensions is None:
        raise ValueError("replacing a store needs the dimensions of the new one")
    if config.backend == "lancedb":
        from smysl.toolkit.lancedb import LanceStore

        return LanceStore(config, dimensions, replace=replace)
    if config.backend == "qdrant":
        from smysl.toolkit.qdrant import QdrantStore

        return QdrantStore(config, dimensions, replace=replace)
    if config.backend == "postgres":
        from smysl.toolkit.postgres import PostgresStore

        return PostgresStore(config, dimensions, replace=replace)
    if config.backend == "memory":
        from smysl.toolkit.memory import MemoryStore

        if dimensions is None:
            raise ValueError("a memory store needs dimensions")
        return MemoryStore(dimensions)
    raise ValueError(f"unknown store backend {config.backend!r}")
