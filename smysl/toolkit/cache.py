"""Content-hash embedding cache: unchanged text under the same model settings is never re-embedded.

A key is the SHA-256 of (model name, resolved instruction, dimensions, text); the value is the
float32 vector. Storage is one SQLite file in WAL mode; every :meth:`EmbeddingCache.put` commits, so
a killed process keeps everything it cached before the kill.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smysl.base import BaseEmbedder
from smysl.prompts import resolve_task


@dataclass(frozen=True)
class CacheConfig:
    """Embedding cache settings.

    Attributes:
        path: SQLite file; None disables caching.
        model_key: Identifies the model in keys; None uses the embedder's ``name``. Set it when
            two different models share a name (e.g. two local checkpoints called ``model``).
    """

    path: Path | None = None
    model_key: str | None = None


def cache_key(model: str, instruction: str | None, dimensions: int, text: str) -> bytes:
    """Stable key for one embedding; instruction presets are resolved first."""
    h = hashlib.sha256()
    for part in (model, resolve_task(instruction) or "", str(dimensions), text):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: no ambiguous joins
        h.update(data)
    return h.digest()


class EmbeddingCache:
    """A persistent key -> vector map."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB)")
        self._db.commit()

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        out: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for s in range(0, len(unique), 500):  # SQLite caps bound parameters per statement
            part = unique[s : s + 500]
            rows = self._db.execute(
                f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(part))})", part)
            out.update((bytes(k), np.frombuffer(v, dtype=np.float32).copy()) for k, v in rows)
        return out

    def put_many(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        vecs = np.asarray(vectors, dtype=np.float32)
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                 [(k, v.tobytes()) for k, v in zip(keys, vecs, strict=True)])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CachedEmbedder:
    """Embeds through an :class:`EmbeddingCache`; counts what it really sent to the model."""

    def __init__(self, embedder: BaseEmbedder, cache: EmbeddingCache | None,
                 model_key: str | None = None) -> None:
        self.embedder = embedder
        self.cache = cache
        self.model_key = model_key or embedder.name
        #: Texts actually embedded (cache misses) and served from the cache, since creation.
        self.embedded = 0
        self.cached = 0

    def embed(self, texts: Sequence[str], *, instruction: str | None = None,
              dimensions: int | None = None, truncate: bool = True) -> np.ndarray:
        """Unit float32 rows in input order; only cache misses reach the model."""
        texts = list(texts)
        dims = dimensions or self.embedder.dimensions
        if self.cache is None:
            self.embedded += len(texts)
            return self.embedder.embed(texts, instruction=instruction, dimensions=dimensions,
                                       truncate=truncate)
        keys = [cache_key(self.model_key, instruction, dims, t) for t in texts]
        found = self.cache.get_many(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            fresh = self.embedder.embed([texts[first[k]] for k in missing],
                                        instruction=instruction, dimensions=dimensions,
                                        truncate=truncate)
            self.cache.put_many(missing, fresh)
            found.update(zip(missing, fresh, strict=True))
        self.embedded += len(missing)
        self.cached += len(texts) - len(missing)
        out = np.empty((len(texts), dims), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out
