"""The semantic toolkit: index and search (RAG retrieval), classification, clustering, dedup.

Storage is LanceDB (embedded, default) or Qdrant (scale-out); optional dependencies install with
``pip install 'smysl[toolkit]'`` and load only when used.

>>> import smysl
>>> from smysl.toolkit import Index, IndexConfig, StoreConfig, SearchConfig
>>> model = smysl.load("st:all-minilm-l6-v2")                            # doctest: +SKIP
>>> index = Index.create_or_open(model, IndexConfig(StoreConfig(uri="kb")))  # doctest: +SKIP
>>> index.add_files(["docs/"])                                           # doctest: +SKIP
>>> index.search("how do I install it?", SearchConfig(k=5))              # doctest: +SKIP
"""

from smysl.toolkit.cache import CacheConfig, CachedEmbedder, EmbeddingCache
from smysl.toolkit.chunking import Chunk, ChunkConfig, Chunker, TokenChunker, chunker_for
from smysl.toolkit.classify import (
    ClassifyConfig,
    SupervisedClassifier,
    ZeroShotClassifier,
)
from smysl.toolkit.cluster import ClusterConfig, ClusterResult, cluster_texts, cluster_vectors
from smysl.toolkit.dedup import DedupConfig, DedupResult, dedup_texts, find_duplicates
from smysl.toolkit.index import Index, IndexConfig
from smysl.toolkit.ingest import (
    BadFileError,
    Document,
    IngestConfig,
    IngestReport,
    ReadConfig,
    SkippedFile,
    read_documents,
)
from smysl.toolkit.search import FusedHit, RerankedHit, SearchConfig, build_context, mmr
from smysl.toolkit.store import Hit, Record, StoreConfig, StoreError, VectorStore
from smysl.toolkit.stores import open_store

__all__ = [
    "BadFileError",
    "CacheConfig",
    "CachedEmbedder",
    "Chunk",
    "ChunkConfig",
    "Chunker",
    "ClassifyConfig",
    "ClusterConfig",
    "ClusterResult",
    "DedupConfig",
    "DedupResult",
    "Document",
    "EmbeddingCache",
    "FusedHit",
    "Hit",
    "Index",
    "IndexConfig",
    "IngestConfig",
    "IngestReport",
    "ReadConfig",
    "Record",
    "RerankedHit",
    "SearchConfig",
    "SkippedFile",
    "StoreConfig",
    "StoreError",
    "SupervisedClassifier",
    "TokenChunker",
    "VectorStore",
    "ZeroShotClassifier",
    "build_context",
    "chunker_for",
    "cluster_texts",
    "cluster_vectors",
    "dedup_texts",
    "find_duplicates",
    "mmr",
    "open_store",
    "read_documents",
]
