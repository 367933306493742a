"""Ingestion: files -> documents -> token-aware chunks -> cached embeddings -> the store.

Crash safety: chunks go to the store in batches and a batch is reported stored (``on_stored``, the
progress bar) only after the store's upsert returned, i.e. after it is durable. A rerun skips every
chunk whose stored payload is unchanged and finds the vectors of everything embedded before a kill
in the embedding cache, so it completes the job without re-embedding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smysl.toolkit.chunking import ChunkConfig, Chunker
from smysl.toolkit.io import TABLE_SUFFIXES, iter_rows

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
#: Payload fields ingestion writes; metadata may not reuse them.
RESERVED = ("doc_id", "chunk", "text", "start", "end", "tokens", "hash", "source")


@dataclass(frozen=True)
class Document:
    """A unit of ingestion: chunk ids are ``f"{id}#{n}"``; metadata goes into each payload."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadConfig:
    """How files become documents.

    Attributes:
        text_field: CSV/JSONL column holding the text.
        id_field: CSV/JSONL column holding the document id; None uses ``path:row``.
        metadata_fields: Columns copied into payloads; None copies all but text and id.
    """

    text_field: str = "text"
    id_field: str | None = None
    metadata_fields: tuple[str, ...] | None = None


@dataclass(frozen=True)
class IngestConfig:
    """How documents are chunked, embedded and written.

    Attributes:
        chunk: Chunk sizes and overlap (see :class:`ChunkConfig`).
        batch_size: Chunks per embed-and-write step, the unit of durability and of progress.
        dimensions: Matryoshka size to store; None keeps the index's size.
        progress: Show a progress bar (chunks/s, with embedded/cached/unchanged counts).
        optimize: Compact the store after ingesting (LanceDB merges many small writes).
    """

    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    batch_size: int = 256
    dimensions: int | None = None
    progress: bool = False
    optimize: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class IngestReport:
    """What one ingestion did, in chunks (documents where named)."""

    documents: int = 0
    chunks: int = 0
    embedded: int = 0
    cached: int = 0
    unchanged: int = 0
    written: int = 0
    stale_deleted: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.chunks / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.documents} documents, {self.chunks} chunks ({rate:.0f}/s): "
                f"{self.written} written, {self.unchanged} unchanged, {self.embedded} embedded, "
                f"{self.cached} from cache, {self.stale_deleted} stale removed")


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def iter_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and supported files under folders named (sorted, recursive)."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file()
                              and f.suffix.lower() in TEXT_SUFFIXES + TABLE_SUFFIXES)
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")


def read_documents(paths: Iterable[str | Path], config: ReadConfig = ReadConfig()
                   ) -> Iterator[Document]:
    """Documents from txt/md (one per file) and csv/jsonl (one per row) files."""
    for path in iter_paths(paths):
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            yield from _table_documents(path, config)
        elif suffix in TEXT_SUFFIXES:
            yield Document(str(path), path.read_text(encoding="utf-8"), {"source": str(path)})
        else:
            raise ValueError(f"{path}: unsupported file type (txt, md, csv, jsonl)")


def _table_documents(path: Path, config: ReadConfig) -> Iterator[Document]:
    for n, row in enumerate(iter_rows(path), 1):
        if config.text_field not in row:
            raise ValueError(f"{path}: row {n} has no {config.text_field!r} column "
                             f"(columns: {sorted(row)}); choose one with --text-field")
        text = row[config.text_field]
        if not isinstance(text, str):
            raise ValueError(f"{path}: row {n}: {config.text_field!r} must be a string")
        if config.id_field is not None:
            if row.get(config.id_field) in (None, ""):
                raise ValueError(f"{path}: row {n} has no id in {config.id_field!r}")
            doc_id = str(row[config.id_field])
        else:
            doc_id = f"{path}:{n}"
        skip = {config.text_field, config.id_field}
        keys = config.metadata_fields if config.metadata_fields is not None else [
            k for k in row if k not in skip]
        meta = {k: row.get(k) for k in keys}
        meta["source"] = str(path)
        yield Document(doc_id, text, meta)


def chunk_payloads(doc: Document, chunker: Chunker) -> list[tuple[str, dict[str, Any]]]:
    """(chunk id, payload) for every chunk of ``doc``."""
    clash = sorted(set(doc.metadata) & (set(RESERVED) - {"source"}))
    if clash:
        raise ValueError(f"document {doc.id!r}: metadata fields {clash} are reserved")
    out = []
    for c in chunker.split(doc.text):
        payload = {**doc.metadata, "doc_id": doc.id, "chunk": c.index, "text": c.text,
                   "start": c.start, "end": c.end, "tokens": c.tokens,
                   "hash": content_hash(c.text)}
        out.append((f"{doc.id}#{c.index}", payload))
    return out


StoredCallback = Callable[[Sequence[str]], None]


def ingest(documents: Iterable[Document], *, store: Any, embed: Callable[[list[str]], Any],
           chunker: Chunker, config: IngestConfig = IngestConfig(),
           on_stored: StoredCallback | None = None, counters: Any = None) -> IngestReport:
    """Chunk, embed (through ``embed``: texts -> unit rows) and upsert ``documents`` into ``store``.

    ``counters`` (a :class:`~smysl.toolkit.cache.CachedEmbedder`) supplies embedded/cached counts.
    """
    import time

    report = IngestReport()
    t0 = time.perf_counter()
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="chunk", desc="ingesting", smoothing=0.1)
    pending: list[tuple[str, dict[str, Any]]] = []
    ends: dict[str, int] = {}  # doc id -> chunk count, for docs whose last chunk is pending
    e0 = (counters.embedded, counters.cached) if counters is not None else (0, 0)

    def flush() -> None:
        if not pending:
            return
        ids = [i for i, _ in pending]
        stored = {r.id: r.payload for r in store.get(ids)}
        todo = [(i, p) for i, p in pending if stored.get(i) != p]
        report.unchanged += len(pending) - len(todo)
        if todo:
            vectors = embed([p["text"] for _, p in todo])
            store.upsert([i for i, _ in todo], vectors, [p for _, p in todo])
            report.written += len(todo)
        # A shorter new version of a document leaves old chunks n.. behind: find them via the
        # first id past the new end, delete only for those documents.
        sentinels = {f"{d}#{n}": d for d, n in ends.items()}
        for r in store.get(list(sentinels)):
            report.stale_deleted += store.delete(
                where={"doc_id": sentinels[r.id], "chunk": {"$gte": ends[sentinels[r.id]]}})
        if on_stored is not None:
            on_stored(ids)
        if bar is not None:
            if counters is not None:
                bar.set_postfix(embedded=counters.embedded - e0[0],
                                cached=counters.cached - e0[1], unchanged=report.unchanged,
                                refresh=False)
            bar.update(len(ids))
        pending.clear()
        ends.clear()

    try:
        for doc in documents:
            chunks = chunk_payloads(doc, chunker)
            report.documents += 1
            report.chunks += len(chunks)
            for n, item in enumerate(chunks):
                pending.append(item)
                if n == len(chunks) - 1:
                    ends[doc.id] = len(chunks)
                if len(pending) >= config.batch_size:
                    flush()
            if not chunks:
                ends[doc.id] = 0  # an emptied document loses all its chunks
        flush()
    finally:
        if bar is not None:
            bar.close()
    if config.optimize and report.written + report.stale_deleted:
        store.optimize()
    if counters is not None:
        report.embedded = counters.embedded - e0[0]
        report.cached = counters.cached - e0[1]
    report.seconds = time.perf_counter() - t0
    return report
