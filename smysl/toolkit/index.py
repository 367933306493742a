"""An index: a vector store bound to one embedding model, with ingestion, search and deletion.

The store remembers which model, dimensions and chunking built it (``read_meta``), so searching
with another model is refused instead of returning meaningless neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder
from smysl.toolkit.cache import CacheConfig, CachedEmbedder, EmbeddingCache
from smysl.toolkit.chunking import chunker_for
from smysl.toolkit.ingest import (
    Document,
    IngestConfig,
    IngestReport,
    ReadConfig,
    StoredCallback,
    ingest,
    read_documents,
)
from smysl.toolkit.search import SearchConfig, search_vectors
from smysl.toolkit.store import Hit, StoreConfig, VectorStore, Where, local_path
from smysl.toolkit.stores import open_store

CACHE_FILE = "embedding-cache.sqlite"


@dataclass(frozen=True)
class IndexConfig:
    """Where an index lives and how it embeds.

    Attributes:
        store: The vector store (see :class:`~smysl.toolkit.store.StoreConfig`).
        cache: The embedding cache; a path of None puts it next to a local LanceDB store
            (``<folder>/embedding-cache.sqlite``) and disables it for other stores.
        dimensions: Matryoshka size of stored vectors; None is the model's native size.
    """

    store: StoreConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    dimensions: int | None = None


def default_cache_path(store: StoreConfig) -> Path | None:
    path = local_path(store.uri) if store.backend == "lancedb" else None
    return path / CACHE_FILE if path is not None else None


class Index:
    """Documents in, nearest chunks out. Build with :meth:`create_or_open` or :meth:`open`."""

    def __init__(self, store: VectorStore, embedder: BaseEmbedder, *,
                 cache: EmbeddingCache | None = None, model_key: str | None = None,
                 dimensions: int | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.dimensions = dimensions or store.dimensions
        self.cached = CachedEmbedder(embedder, cache, model_key)

    @classmethod
    def create_or_open(cls, embedder: BaseEmbedder, config: IndexConfig, *,
                       create: bool = True, model_spec: str | None = None) -> Index:
        """Open the index at ``config.store`` (``create``: make it for ``embedder`` if missing)
        and check that it was built with this model and size.

        ``model_spec`` is the string that loads the model (``st:all-minilm-l6-v2``); it is saved
        so that later searches can load the model without being told (backend ``name``s may
        lack the scheme).
        """
        dims = config.dimensions or embedder.dimensions
        try:
            store = open_store(config.store, None if config.store.backend != "memory" else dims)
        except FileNotFoundError:
            if not create:
                raise
            store = open_store(config.store, dims)
        meta = store.read_meta()
        if meta:
            problem = None
            if meta.get("model") != embedder.name:
                problem = (f"index was built with model {meta.get('model')!r}, "
                           f"not {embedder.name!r}")
            elif config.dimensions and config.dimensions != store.dimensions:
                problem = f"index stores {store.dimensions}-d vectors, not {config.dimensions}-d"
            if problem:
                store.close()
                raise ValueError(problem)
            dims = store.dimensions
        elif store.dimensions != dims:
            store.close()
            raise ValueError(f"store holds {store.dimensions}-d vectors, not {dims}-d")
        else:
            store.write_meta({"model": embedder.name, "dimensions": dims,
                              "load": model_spec or embedder.name})
        path = config.cache.path or default_cache_path(config.store)
        cache = EmbeddingCache(path) if path is not None else None
        return cls(store, embedder, cache=cache, model_key=config.cache.model_key,
                   dimensions=dims)

    @staticmethod
    def stored_model(config: StoreConfig) -> str:
        """The model string that loads the model an existing index was built with."""
        with open_store(config) as store:
            meta = store.read_meta()
            model = meta.get("load") or meta.get("model")
        if not model:
            raise ValueError(f"{config.uri}: no smysl index metadata (built outside smysl?)")
        return str(model)

    # ------------------------------------------------------------------ writing
    def add(self, documents: Iterable[Document], config: IngestConfig | None = None,
            *, on_stored: StoredCallback | None = None) -> IngestReport:
        """Ingest documents; unchanged chunks are skipped and cached vectors reused."""
        config = config or IngestConfig()
        dims = config.dimensions or self.dimensions
        if dims != self.dimensions:
            raise ValueError(f"index stores {self.dimensions}-d vectors, not {dims}-d")
        chunker = chunker_for(self.embedder, config.chunk)
        return ingest(documents, store=self.store, chunker=chunker, config=config,
                      embed=lambda texts: self.cached.embed(
                          texts, dimensions=self._dims_arg(), truncate=True),
                      on_stored=on_stored, counters=self.cached)

    def add_files(self, paths: Iterable[str | Path], read: ReadConfig | None = None,
                  config: IngestConfig | None = None,
                  on_stored: StoredCallback | None = None) -> IngestReport:
        """Ingest txt/md/csv/jsonl files or folders of them."""
        return self.add(read_documents(paths, read or ReadConfig()), config, on_stored=on_stored)

    def add_texts(self, texts: Sequence[str], ids: Sequence[str] | None = None,
                  metadata: Sequence[Mapping[str, Any]] | None = None,
                  config: IngestConfig | None = None) -> IngestReport:
        """Ingest in-memory texts (ids default to their positions)."""
        ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
        metas = list(metadata) if metadata is not None else [{} for _ in texts]
        if not len(ids) == len(metas) == len(texts):
            raise ValueError("texts, ids and metadata must have the same length")
        return self.add((Document(i, t, dict(m)) for i, t, m in zip(ids, texts, metas,
                                                                    strict=True)), config)

    def delete(self, doc_ids: Sequence[str] | None = None, *, where: Where | None = None
               ) -> int:
        """Delete the chunks of documents (by id) and/or those matching a filter."""
        if doc_ids is None and not where:
            raise ValueError("delete needs document ids or a filter")
        if doc_ids is None:
            return self.store.delete(where=where)
        flt = dict(where or {})
        if "doc_id" in flt:
            raise ValueError("give document ids either as doc_ids or in the filter")
        return self.store.delete(where={**flt, "doc_id": list(doc_ids)}) if doc_ids else 0

    # ------------------------------------------------------------------ reading
    def embed_queries(self, queries: Sequence[str], instruction: str | None = None
                      ) -> np.ndarray:
        """Query vectors with the search instruction (model default when the model takes one)."""
        task = self.embedder.choose_instruction(instruction, role="query")
        return self.embedder.embed(list(queries), instruction=task,
                                   dimensions=self._dims_arg(), truncate=True)

    def search(self, queries: str | Sequence[str], config: SearchConfig | None = None
               ) -> list[list[Hit]]:
        """Top-k chunks per query (a single string gives one list)."""
        config = config or SearchConfig()
        qs = [queries] if isinstance(queries, str) else list(queries)
        return search_vectors(self.store, self.embed_queries(qs, config.instruction), config)

    def count(self, where: Where | None = None) -> int:
        return self.store.count(where)

    def close(self) -> None:
        if self.cached.cache is not None:
            self.cached.cache.close()
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dims_arg(self) -> int | None:
        return self.dimensions if self.dimensions != self.embedder.dimensions else None


