"""One model's embeddings during an eval run: each distinct (instruction, text) embedded once,
timed for the throughput report.

Vectors are kept at the model's full size; Matryoshka sizes are cut from them later
(:func:`smysl.pooling.finish`), which is exactly what asking the model for fewer
dimensions returns. With a ``cache_dir`` the vectors also persist across runs (development),
in a folder per :func:`cache_key`: two checkpoints with the same name never share vectors, nor
do two truncation limits of one checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder, fingerprint_of
from smysl.eval.results import model_slug

log = logging.getLogger(__name__)


@dataclass
class Throughput:
    """Work actually done by the model in this run (cache hits excluded)."""

    texts: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def texts_per_s(self) -> float | None:
        return self.texts / self.seconds if self.seconds > 0 else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None


def cache_key(model: BaseEmbedder) -> str:
    """What decides the vectors an eval run caches for ``model``: its
    :meth:`~smysl.base.BaseEmbedder.fingerprint` (weights, dtype, quantization) and its
    ``max_tokens`` (``--max-tokens``), which the fingerprint leaves out but which truncates the
    texts. The rest is keyed elsewhere or fixed: the instruction names the file, sizes are cut
    later from the full vectors, and eval always truncates."""
    return fingerprint_of({"model": model.fingerprint(), "max_tokens": model.max_tokens})


def _key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class ModelEmbeddings:
    """Full-size unit vectors of one model, keyed by instruction and text, shared by every task.

    Kept in memory for the run, and on disk under ``cache_dir`` when one is given. Not the
    toolkit's :class:`smysl.toolkit.EmbeddingCache` (SQLite, behind ``CachedEmbedder``).
    """

    def __init__(self, model: BaseEmbedder, *, cache_dir: Path | None = None,
                 progress: bool = True) -> None:
        self.model = model
        self.progress = progress
        self.throughput = Throughput()
        self._vectors: dict[str | None, dict[bytes, np.ndarray]] = {}
        self._dir = (Path(cache_dir) / f"{model_slug(model.name)}-{cache_key(model)[:16]}"
                     if cache_dir else None)

    #: Texts per embedding call: what a failure (a paid API's outage, Ctrl-C) can lose.
    block = 2048
    #: Seconds between saves of the disk cache while one task's texts are embedded (each
    #: save writes the whole file: saving after every block would be quadratic).
    save_every = 120.0

    def ensure(self, texts: list[str], instruction: str | None, *, label: str = "") -> None:
        """Embed whichever of ``texts`` (under ``instruction``) are not cached yet, a block at a
        time; what was embedded is saved also when a later block fails."""
        store = self._load(instruction)
        missing = list(dict.fromkeys(t for t in texts if _key(t) not in store))
        if not missing:
            return
        bar = self._bar(len(missing), label)
        done, saved = 0, time.monotonic()
        try:
            for s in range(0, len(missing), self.block):
                part = missing[s : s + self.block]
                start = time.perf_counter()
                # truncate=True: MTEB embeds over-long texts truncated to the model's limit
                vectors = self.model.embed(part, instruction=instruction, truncate=True,
                                           progress=bar if bar is not None else False)
                self.throughput.seconds += time.perf_counter() - start
                for t, v in zip(part, vectors, strict=True):
                    store[_key(t)] = v
                done += len(part)
                if done < len(missing) and time.monotonic() - saved > self.save_every:
                    self._save(instruction, store)
                    saved = time.monotonic()
        finally:
            if bar is not None:
                bar.close()
            if done:
                self.throughput.texts += done
                self.throughput.tokens += self._count_tokens(missing[:done], instruction)
                self._save(instruction, store)

    def get(self, texts: list[str], instruction: str | None) -> np.ndarray:
        """Full-size vectors of ``texts`` in order; every text must have been ensured."""
        store = self._load(instruction)
        if not texts:
            return np.zeros((0, self.model.dimensions), dtype=np.float32)
        return np.stack([store[_key(t)] for t in texts])

    # ------------------------------------------------------------------ internals
    def _count_tokens(self, texts: list[str], instruction: str | None) -> int:
        try:
            counts = self.model.count_tokens(self.model.format_texts(texts, instruction))
        except NotImplementedError:
            return 0
        cap = self.model.max_tokens or max(counts, default=0)
        return int(sum(min(c, cap) for c in counts))

    def _bar(self, total: int, label: str) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="text", desc=label or "embedding", smoothing=0.1,
                    leave=False)

    def _file(self, instruction: str | None) -> Path | None:
        if self._dir is None:
            return None
        tag = hashlib.sha1((instruction or "").encode()).hexdigest()[:16]
        return self._dir / f"{'doc' if instruction is None else 'q'}-{tag}.npz"

    def _load(self, instruction: str | None) -> dict[bytes, np.ndarray]:
        if instruction in self._vectors:
            return self._vectors[instruction]
        store: dict[bytes, np.ndarray] = {}
        path = self._file(instruction)
        if path is not None and path.is_file():
            try:
                with np.load(path) as z:
                    if z["vectors"].shape[1:] == (self.model.dimensions,):
                        store = {k.tobytes(): v
                                 for k, v in zip(z["keys"], z["vectors"], strict=True)}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                # a damaged file (a disk's fault, an edit) was a bare traceback and no report:
                # its texts are embedded again, and the file replaced when they are saved
                log.warning("%s: a damaged embedding cache (%s: %s); its texts are embedded "
                            "again and the file replaced", path, type(e).__name__, e)
                store = {}
        self._vectors[instruction] = store
        return store

    def _save(self, instruction: str | None, store: dict[bytes, np.ndarray]) -> None:
        path = self._file(instruction)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # raw uint8 rows: numpy "S" strings would drop a digest's trailing zero bytes
        keys = np.frombuffer(b"".join(store), dtype=np.uint8).reshape(len(store), -1)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=np.stack(list(store.values())))
        tmp.replace(path)
