"""Content-hash embedding cache: unchanged text under the same model is never re-embedded.

A key is the SHA-256 of (model fingerprint, resolved instruction, dimensions, text); the value is
the float32 vector and a checksum of key and vector. The fingerprint
(:meth:`smysl.base.BaseEmbedder.fingerprint`) names the weights, not the model string, so two
checkpoints both called ``model`` never share entries.

Every vector read back is checked (checksum, width, finite, unit length) before it is served: a
damaged entry is recomputed and rewritten, and counted in :attr:`CachedEmbedder.recomputed`. A cache
file SQLite cannot read at all is reported once and bypassed (texts are embedded afresh); the
cache is an accelerator, never a reason to fail or to serve a wrong vector.

Storage is one SQLite file in WAL mode; every :meth:`EmbeddingCache.put_many` commits, so a killed
process keeps everything it cached before the kill.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smysl.base import BaseEmbedder
from smysl.prompts import resolve_task
from smysl.toolkit.store import vector_problem

#: The table of this layout (``emb``, the layout before checksums, is left alone and unused).
TABLE = "vectors"
#: How long a process waits for another one holding the cache file (SQLite's busy wait).
LOCK_WAIT_S = 60


@dataclass(frozen=True)
class CacheConfig:
    """Embedding cache settings.

    Attributes:
        path: SQLite file; None disables caching.
        model_key: Identifies the model in keys; None uses the embedder's
            :meth:`~smysl.base.BaseEmbedder.fingerprint` (set it only to share entries between
            models you know to be identical).
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


def _checksum(key: bytes, vec: bytes) -> bytes:
    # Over key and vector: a flipped key byte (an entry answering for another text) is caught too.
    return hashlib.sha256(key + vec).digest()[:16]


class EmbeddingCache:
    """A persistent key -> vector map whose entries carry checksums.

    ``problems`` lists what went wrong with the file (unreadable, unwritable); the cache then
    answers nothing and stores nothing rather than fail the job.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.problems: list[str] = []
        self._db: sqlite3.Connection | None = None
        # Two processes opening a new file at once: switching it to WAL answers "database is
        # locked" at once, without the connection's busy wait (2 in 1,200 openings measured);
        # the setup is tried again for as long as a busy wait would have waited.
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                self._db = sqlite3.connect(str(self.path), timeout=LOCK_WAIT_S)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} "
                                 "(key BLOB PRIMARY KEY, vec BLOB, checksum BLOB)")
                self._db.commit()
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    self._fail(e)
                    return
                if self._db is not None:
                    self._db.close()
                self._db = None
                time.sleep(0.01 + 0.04 * random.random())
            except sqlite3.DatabaseError as e:
                self._fail(e)
                return

    def _fail(self, error: sqlite3.Error) -> None:
        if "locked" in str(error):
            self.problems.append(f"{self.path}: embedding cache busy ({error}: another process "
                                 f"held it for {LOCK_WAIT_S} s); embedding without it")
        else:
            self.problems.append(f"{self.path}: embedding cache unreadable ({error}); "
                                 f"embedding without it (delete the file to start a fresh "
                                 f"cache)")
        if self._db is not None:
            self._db.close()
        self._db = None

    @property
    def usable(self) -> bool:
        return self._db is not None

    def get_many(self, keys: Sequence[bytes], dimensions: int
                 ) -> tuple[dict[bytes, np.ndarray], set[bytes]]:
        """Intact vectors found for ``keys``, and the keys whose entries are damaged."""
        out: dict[bytes, np.ndarray] = {}
        damaged: set[bytes] = set()
        unique = list(dict.fromkeys(keys))
        try:
            for s in range(0, len(unique), 500):  # SQLite caps bound parameters per statement
                if self._db is None:
                    break
                part = unique[s : s + 500]
                wanted = set(part)
                rows = self._db.execute(f"SELECT key, vec, checksum FROM {TABLE} "
                                        f"WHERE key IN ({','.join('?' * len(part))})", part)
                for k, v, c in rows:
                    k, v = bytes(k), bytes(v) if v is not None else b""
                    if k not in wanted:
                        continue  # a damaged index can answer with another row
                    vec = np.frombuffer(v, dtype=np.float32) if len(v) % 4 == 0 else None
                    if (c is None or bytes(c) != _checksum(k, v) or vec is None
                            or vector_problem(vec, dimensions) is not None):
                        damaged.add(k)
                    else:
                        out[k] = vec.copy()
        except sqlite3.DatabaseError as e:
            self._fail(e)
            return {}, set()
        return out, damaged - set(out)

    def put_many(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if self._db is None:
            return
        vecs = np.asarray(vectors, dtype=np.float32)
        rows = [(k, v.tobytes(), _checksum(k, v.tobytes()))
                for k, v in zip(keys, vecs, strict=True)]
        try:
            with self._db:
                self._db.executemany(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?)", rows)
        except sqlite3.DatabaseError as e:
            self._fail(e)

    def __len__(self) -> int:
        if self._db is None:
            return 0
        return int(self._db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class CachedEmbedder:
    """Embeds through an :class:`EmbeddingCache`; counts what it really sent to the model."""

    def __init__(self, embedder: BaseEmbedder, cache: EmbeddingCache | None,
                 model_key: str | None = None) -> None:
        self.embedder = embedder
        self.cache = cache
        self.model_key = model_key or embedder.fingerprint()
        #: Texts actually embedded (cache misses) and served from the cache, since creation.
        self.embedded = 0
        self.cached = 0
        #: Damaged cache entries found, recomputed and rewritten, since creation.
        self.recomputed = 0
        #: The places, in the last call's texts, of those sent to the model (a text twice:
        #: its first place): what that call's embedding cost is counted on.
        self.sent: list[int] = []

    @property
    def problems(self) -> list[str]:
        """What went wrong with the cache file (see :class:`EmbeddingCache`)."""
        return self.cache.problems if self.cache is not None else []

    def embed(self, texts: Sequence[str], *, instruction: str | None = None,
              dimensions: int | None = None, truncate: bool = True) -> np.ndarray:
        """Unit float32 rows in input order; only cache misses (and damaged entries) reach the
        model."""
        texts = list(texts)
        dims = dimensions or self.embedder.dimensions
        if self.cache is None or not self.cache.usable:
            self.embedded += len(texts)
            self.sent = list(range(len(texts)))
            return self.embedder.embed(texts, instruction=instruction, dimensions=dimensions,
                                       truncate=truncate)
        keys = [cache_key(self.model_key, instruction, dims, t) for t in texts]
        found, damaged = self.cache.get_many(keys, dims)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        self.sent = [first[k] for k in missing]
        if missing:
            fresh = self.embedder.embed([texts[first[k]] for k in missing],
                                        instruction=instruction, dimensions=dimensions,
                                        truncate=truncate)
            self.cache.put_many(missing, fresh)
            found.update(zip(missing, fresh, strict=True))
        self.embedded += len(missing)
        self.recomputed += len(damaged)
        self.cached += len(texts) - len(missing)
        out = np.empty((len(texts), dims), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out
