"""Ingestion: files -> documents -> token-aware chunks -> cached embeddings -> the store.

Crash safety: chunks go to the store in batches and a batch is reported stored (``on_stored``, the
progress bar) only after the store's upsert returned, i.e. after it is durable. A rerun skips every
chunk whose stored payload is unchanged *and* whose stored vector is intact (checksum, width,
finite, unit length: a damaged one is re-embedded), and finds the vectors of everything embedded
before a kill in the embedding cache, so it completes the job without re-embedding.

Document ids of files are their paths, normalised (see :func:`document_path`): absolute by
default, so ``/abs/docs`` and ``docs`` give the same ids and two projects' ``docs/notes.txt``
never collide; relative to :attr:`ReadConfig.root` when one is declared (portable indexes).
A file that is binary or not UTF-8 is skipped and reported by name (:attr:`IngestReport.skipped`),
or stops the run with its name under :attr:`ReadConfig.strict`.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smysl.rows import row_id, separator_hint
from smysl.tokenize import check_unicode
from smysl.toolkit.chunking import ChunkConfig, Chunker
from smysl.toolkit.io import TABLE_SUFFIXES, csv_header, iter_rows
from smysl.toolkit.store import (
    DIGEST_FIELD,
    ID_FIELD,
    has_nul,
    same_payload,
    vector_digest,
    vector_problem,
)

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
#: The tables a folder's files are read as: a .json file in a folder is a config as often as
#: a table, so only one named on its own is read (an array of objects).
FOLDER_TABLE_SUFFIXES = tuple(s for s in TABLE_SUFFIXES if s != ".json")
#: Payload fields ingestion writes, or a store keeps for itself; metadata may not reuse them.
RESERVED = ("doc_id", "chunk", "text", "start", "end", "tokens", "hash", "source", DIGEST_FIELD,
            ID_FIELD)
_BLOCK = 1 << 20  # bytes per read when checking a file


@dataclass(frozen=True)
class Document:
    """A unit of ingestion: chunk ids are ``f"{id}#{n}"``; metadata goes into each payload.
    ``origin`` says where it was read (``FILE``, ``FILE row N``) for error messages only."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: str = field(default="", compare=False)


@dataclass(frozen=True)
class ReadConfig:
    """How files become documents.

    Attributes:
        text_field: CSV/JSONL column holding the text.
        id_field: CSV/JSONL column holding the document id; None uses ``<file id>:<row>``.
        metadata_fields: Columns copied into payloads; None copies all but text and id.
        root: Folder file ids are relative to (``docs/a.md``); None: absolute paths. Files
            outside it are refused.
        strict: Stop at the first binary or non-UTF-8 file (``BadFileError`` naming it) instead
            of skipping and reporting it.
    """

    text_field: str = "text"
    id_field: str | None = None
    metadata_fields: tuple[str, ...] | None = None
    root: Path | None = None
    strict: bool = False


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of an ingestion, and why."""

    path: str
    reason: str


class BadFileError(ValueError):
    """A file that cannot be read as text (binary, invalid UTF-8), under ``strict``."""


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
    #: Documents deleted because their files no longer hold them (``add_files(prune=True)``).
    pruned: int = 0
    #: Tokens of the chunks written, as embedded (EOS included; a chunk served from the
    #: embedding cache counts too); None once a chunk's count was an estimate (no tokenizer).
    tokens: int | None = 0
    #: Of :attr:`tokens`, those of the chunks sent to the model (not served from the cache):
    #: what the embedding cost; None as :attr:`tokens`.
    embedded_tokens: int | None = 0
    #: Stored vectors found damaged (payload unchanged) and re-embedded.
    repaired: int = 0
    #: Damaged embedding-cache entries recomputed.
    recomputed: int = 0
    seconds: float = 0.0
    #: Files left out (binary, not UTF-8), with the reason.
    skipped: list[SkippedFile] = field(default_factory=list)
    #: Other things worth a warning (an unreadable cache file).
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts, then one line per skipped file or problem."""
        rate = self.chunks / self.seconds if self.seconds > 0 else 0.0
        line = (f"{self.documents} documents, {self.chunks} chunks ({rate:.0f}/s): "
                f"{self.written} written, {self.unchanged} unchanged, {self.embedded} embedded, "
                f"{self.cached} from cache, {self.stale_deleted} stale removed")
        if self.pruned:
            line += f", {self.pruned} documents no longer in their files removed"
        if self.repaired:
            line += f", {self.repaired} damaged stored vectors re-embedded"
        if self.recomputed:
            line += f", {self.recomputed} damaged cache entries recomputed"
        if self.skipped:
            line += f"; {len(self.skipped)} files skipped"
        lines = [line] + [f"skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines + [f"warning: {p}" for p in self.problems])


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def text_ids(texts: Sequence[str]) -> list[str]:
    """Document ids for texts given without ids: a hash of each text (16 hex digits; the
    n-th repeat of a text in ``texts`` gets ``HASH-n``). Adding the same texts again changes
    nothing, and a text added later never takes another's id (ids by position did: a second
    ``add_texts`` replaced the first call's documents)."""
    seen: dict[str, int] = {}
    out = []
    for t in texts:
        h = content_hash(t)[:16]
        seen[h] = n = seen.get(h, 0) + 1
        out.append(h if n == 1 else f"{h}-{n}")
    return out


def iter_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and supported files under folders named (sorted, recursive); a file named
    twice (say, itself and through its folder) comes once, as its documents' ids must."""
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.suffix.lower() in TEXT_SUFFIXES + FOLDER_TABLE_SUFFIXES)
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in files:
            real = f.resolve()
            if real not in seen:
                seen.add(real)
                yield f


def document_path(path: Path, root: Path | None = None) -> str:
    """The id of a file: its absolute path with symlinks and ``..`` resolved, or its path
    relative to ``root`` (POSIX separators either way)."""
    full = path.resolve()
    if root is None:
        return full.as_posix()
    try:
        return full.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{path} is outside the root folder {root}; ids are relative to it "
                         f"(give another --root, or none for absolute ids)") from None


def text_problem(path: Path, *, nul: bool = True) -> str | None:
    """Why ``path`` is not a UTF-8 text file (a NUL byte, invalid UTF-8), else None; reads it
    in 1 MiB blocks, so memory stays bounded whatever its size. ``nul=False``: a NUL is text
    (a table's: one CSV field holding one skipped the whole file; a binary file fails as
    UTF-8)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            at = block.find(0) if nul else -1
            if at >= 0:
                return f"binary file (NUL byte at offset {offset + at})"
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                return f"not valid UTF-8 (near byte {max(offset + e.start, 0)}: {e.reason})"
            if not block:
                return None
            offset += len(block)


def read_documents(paths: Iterable[str | Path], config: ReadConfig = ReadConfig(),
                   skipped: list[SkippedFile] | None = None) -> Iterator[Document]:
    """Documents from txt/md (one per file) and csv/jsonl (one per row) files.

    Files that are not UTF-8 text are appended to ``skipped`` (a warning when None is given) or,
    with ``config.strict``, raise :class:`BadFileError` naming the file. A
    ``config.metadata_fields`` name that no row of any CSV/JSONL file had raises
    ``ValueError`` once every document is out (a misspelt name stored null on every row);
    where every table is a CSV, their headers decide it before the first document.
    """
    seen: set[str] = set()  # metadata fields some table row had
    tables = 0
    files = list(iter_paths(paths))
    if config.metadata_fields is not None:
        _check_csv_headers(files, config.metadata_fields)
    for path in files:
        suffix = path.suffix.lower()
        if suffix not in TABLE_SUFFIXES + TEXT_SUFFIXES:
            raise ValueError(f"{path}: unsupported file type (txt, md, csv, jsonl, json)")
        doc_path = document_path(path, config.root)
        # a NUL in a CSV field is text; in JSONL it is no JSON (and in text files binary)
        problem = text_problem(path, nul=suffix != ".csv")
        if problem is not None:
            if config.strict:
                raise BadFileError(f"{path}: {problem}")
            if skipped is None:
                warnings.warn(f"skipped {path}: {problem}", stacklevel=2)
            else:
                skipped.append(SkippedFile(str(path), problem))
            continue
        if suffix in TABLE_SUFFIXES:
            tables += 1
            yield from _table_documents(path, doc_path, config, seen)
        else:
            # utf-8-sig: a byte-order mark is no text (it began the first chunk)
            yield Document(doc_path, path.read_text(encoding="utf-8-sig"),
                           {"source": doc_path}, origin=str(path))
    absent = [k for k in config.metadata_fields or () if k not in seen]
    if tables and absent:
        raise ValueError(f"--meta-fields {absent}: no row of the input files has "
                         f"{'it' if len(absent) == 1 else 'them'} (a misspelt field name?)")


def _check_csv_headers(files: list[Path], fields: tuple[str, ...]) -> None:
    """``ValueError`` for a ``fields`` name no CSV header among ``files`` has, when every table
    among them is a CSV: before any row is read (a misspelt name would store null on every
    row, and the Python API writes as it reads). A name one CSV lacks and another has is
    kept: that file's rows store null under it."""
    tables = [p for p in files if p.suffix.lower() in TABLE_SUFFIXES]
    if not tables or any(p.suffix.lower() != ".csv" for p in tables):
        return  # JSONL rows may each have other fields: known once every row is read
    columns: set[str] = set()
    for path in tables:
        try:
            columns.update(csv_header(path))
        except (OSError, UnicodeDecodeError, csv.Error):
            return  # a file read_documents skips or names itself
    absent = [k for k in fields if k not in columns]
    if absent:
        shown = ", ".join(map(str, tables[:3])) + (" ..." if len(tables) > 3 else "")
        raise ValueError(f"--meta-fields {absent}: no CSV input has "
                         f"{'that column' if len(absent) == 1 else 'those columns'} (a "
                         f"misspelt name?; columns: {sorted(columns)}; files: {shown})")


def _table_documents(path: Path, doc_path: str, config: ReadConfig,
                     seen: set[str]) -> Iterator[Document]:
    """The rows of a CSV/JSONL/JSON file as documents; the metadata fields met are added to
    ``seen``."""
    for n, row in enumerate(iter_rows(path), 1):
        if config.text_field not in row:
            raise ValueError(f"{path}: row {n} has no {config.text_field!r} column "
                             f"(columns: {sorted(row)}){separator_hint(list(row))}; choose "
                             "one with --text-field")
        text = row[config.text_field]
        if not isinstance(text, str):
            raise ValueError(f"{path}: row {n}: {config.text_field!r} must be a string")
        if config.id_field is not None:
            try:  # JSON's 1.0 is id 1, true no id: as the corpus job reads them
                doc_id = row_id(row.get(config.id_field), config.id_field)
            except ValueError as e:
                raise ValueError(f"{path}: row {n}: {e}") from None
        else:
            doc_id = f"{doc_path}:{n}"
        # JSON may spell a lone surrogate ("\ud800"): found while reading, before an index
        # is made or emptied (the tokenizer's TypeError named no file)
        check_unicode(text, f"{path}: row {n}: {config.text_field!r}")
        check_unicode(doc_id, f"{path}: row {n}: the id")
        skip = {config.text_field, config.id_field}
        keys = config.metadata_fields if config.metadata_fields is not None else [
            k for k in row if k not in skip]
        meta = {k: row.get(k) for k in keys}
        if config.metadata_fields is not None and len(seen) < len(keys):  # until all met
            seen.update(k for k in keys if k in row)
        if "source" in meta:  # it was overwritten with the file's path without a word
            raise ValueError(f"{path}: row {n}: the column 'source' is reserved (smysl records "
                             f"the file there); rename it, or leave it out of --meta-fields")
        check_metadata(meta, f"{path}: row {n}")
        meta["source"] = doc_path
        yield Document(doc_id, text, meta, origin=f"{path} row {n}")


class SeenIds:
    """The ids met so far in one ingestion, each with its document's number, in 16 bytes (an
    8-byte digest and the number, in sorted arrays): 10M rows hold 160 MB, where a dict of
    the ids and where they were read held over a GB. Two ids of one digest (odds about
    n**2 / 2**64) would be taken for a repeat, and refused: never a silent overwrite."""

    #: Ids kept in a plain dict before they join the sorted arrays.
    RECENT = 1 << 16

    def __init__(self) -> None:
        self._keys = np.empty(0, np.int64)
        self._numbers = np.empty(0, np.int64)
        self._recent: dict[int, int] = {}

    def check(self, doc: Document, number: int) -> None:
        """Record ``doc`` as document ``number``; ``ValueError`` naming both when its id was
        met already (the later would replace the earlier)."""
        first = self.add(doc.id, number)
        if first is not None:
            raise ValueError(f"document id {doc.id!r} repeats: document {first} and "
                             f"{doc.origin or f'document {number}'}; ids must be unique (the "
                             "later would replace the earlier)")

    def add(self, doc_id: str, number: int) -> int | None:
        """Record ``doc_id`` as document ``number``; the number of the document that had it
        first when it was met already (then nothing is recorded)."""
        # 63 bits: numpy compares them as int64, never through float
        key = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"),
                                             digest_size=8).digest(), "little") >> 1
        if key in self._recent:
            return self._recent[key]
        i = int(np.searchsorted(self._keys, key))
        if i < len(self._keys) and self._keys[i] == key:
            return int(self._numbers[i])
        self._recent[key] = number
        if len(self._recent) >= self.RECENT:
            keys = np.fromiter(self._recent, np.int64, len(self._recent))
            numbers = np.fromiter(self._recent.values(), np.int64, len(self._recent))
            order = np.argsort(keys)
            at = np.searchsorted(self._keys, keys[order])
            self._keys = np.insert(self._keys, at, keys[order])
            self._numbers = np.insert(self._numbers, at, numbers[order])
            self._recent.clear()
        return None


def check_metadata(metadata: dict[str, Any], what: str) -> dict[str, Any]:
    """``metadata`` as JSON values, the same in every store: numpy numbers as Python's, dates
    as ISO text, tuples as lists (LanceDB's write failed on a numpy int64 or a date, which the
    memory store kept as they were; a tuple came back a list and was rewritten at every
    ingestion). ``ValueError`` naming ``what`` for a reserved field name, a value of another
    type, or a string that is not valid Unicode."""
    clash = sorted(set(metadata) & (set(RESERVED) - {"source"}))
    if clash:
        raise ValueError(f"{what}: metadata fields {clash} are reserved (smysl stores each "
                         "chunk's own there); rename them, or leave them out of --meta-fields")
    try:  # any depth, keys too: a surrogate in a list failed the store's write unnamed
        text = json.dumps(metadata, ensure_ascii=False, default=_json_value)
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what}: the metadata is not valid Unicode (a lone surrogate in a "
                         "field name or value); pass UTF-8 text") from None
    except TypeError as e:
        raise ValueError(f"{what}: {e}") from None
    if all(type(v) in _PLAIN for v in metadata.values()):
        return metadata  # the common case: nothing to convert
    out: dict[str, Any] = json.loads(text)
    return out


#: Metadata values kept as they are (anything else goes through JSON).
_PLAIN = (str, int, float, bool, type(None))


def _json_value(value: object) -> object:
    """A metadata value JSON has no type for, as one it has; else a TypeError saying what
    metadata may hold."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(f"a metadata value must be text, a number, true/false, null, a list or an "
                    f"object, not {type(value).__name__} ({value!r:.60})")


def iter_chunk_payloads(doc: Document, chunker: Chunker
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(chunk id, payload) for every chunk of ``doc``, as the chunker produces them."""
    what = doc.origin or f"document {doc.id!r}"
    metadata = check_metadata(doc.metadata, what)
    check_unicode(doc.text, f"{what}: the text")
    check_unicode(doc.id, f"{what}: the id")
    for c in chunker.iter_split(doc.text):
        payload = {**metadata, "doc_id": doc.id, "chunk": c.index, "text": c.text,
                   "start": c.start, "end": c.end, "tokens": c.tokens,
                   "hash": content_hash(c.text)}
        yield f"{doc.id}#{c.index}", payload


def chunk_payloads(doc: Document, chunker: Chunker) -> list[tuple[str, dict[str, Any]]]:
    """(chunk id, payload) for every chunk of ``doc``."""
    return list(iter_chunk_payloads(doc, chunker))


def stored_problem(record: Any, dimensions: int, checksums: bool) -> str | None:
    """Why a stored chunk cannot be trusted, else None: its vector (see
    :func:`~smysl.toolkit.store.vector_problem`), its text against its ``hash``, its id against
    ``doc_id#chunk``. ``checksums``: the index writes
    :data:`~smysl.toolkit.store.DIGEST_FIELD`, so a record without it is damaged too."""
    p = record.payload
    digest = p.get(DIGEST_FIELD)
    if checksums and not isinstance(digest, str):
        return "has no checksum (damaged payload)"
    if "hash" in p and (not isinstance(p.get("text"), str) or content_hash(p["text"]) != p["hash"]):
        return "text does not match its hash"
    if "doc_id" in p and "chunk" in p and record.id != f"{p['doc_id']}#{p['chunk']}":
        return f"id does not match its payload ({p['doc_id']}#{p['chunk']})"
    return vector_problem(record.vector, dimensions, digest if isinstance(digest, str) else None)


def _without_digest(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != DIGEST_FIELD}


StoredCallback = Callable[[Sequence[str]], None]


def ingest(documents: Iterable[Document], *, store: Any, embed: Callable[[list[str]], Any],
           chunker: Chunker, config: IngestConfig = IngestConfig(),
           on_stored: StoredCallback | None = None, counters: Any = None,
           checksums: bool = True) -> IngestReport:
    """Chunk, embed (through ``embed``: texts -> unit rows) and upsert ``documents`` into ``store``.

    ``counters`` (a :class:`~smysl.toolkit.cache.CachedEmbedder`) supplies embedded/cached counts.
    Each payload gets the checksum of its vector; ``checksums=False`` (an index built before
    checksums) accepts stored records without one. Two documents with one id are a ValueError
    naming both (the later would silently replace the earlier), raised before the batch holding
    the repeat is written; batches stored before it stay stored, as after a crash.
    """
    import time

    report = IngestReport()
    t0 = time.perf_counter()
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="chunk", desc="ingesting", smoothing=0.1)
    pending: list[tuple[str, dict[str, Any]]] = []
    ends: dict[str, int] = {}  # doc id -> chunk count, for docs fully chunked since last flush
    e0 = ((counters.embedded, counters.cached, counters.recomputed) if counters is not None
          else (0, 0, 0))
    seen = SeenIds()  # every document id of this ingestion, to refuse a repeat

    def flush() -> None:
        if not pending and not ends:
            return
        ids = [i for i, _ in pending]
        stored = {r.id: r for r in store.get(ids)}
        todo = []
        for i, p in pending:
            r = stored.get(i)
            # same_payload, not ==: metadata changed from 1 to true is rewritten (to a filter
            # they differ, and a run that left it would say "unchanged" with the old type kept)
            if r is not None and same_payload(_without_digest(r.payload), p):
                if stored_problem(r, store.dimensions, checksums) is None:
                    continue
                report.repaired += 1  # same content, damaged vector: embed it again
            todo.append((i, p))
        report.unchanged += len(pending) - len(todo)
        if todo:
            vectors = embed([p["text"] for _, p in todo])
            store.upsert([i for i, _ in todo], vectors,
                         [{**p, DIGEST_FIELD: vector_digest(v)}
                          for (_, p), v in zip(todo, vectors, strict=True)])
            report.written += len(todo)
            counts = [c for _, p in todo if isinstance(c := p.get("tokens"), int)]
            if report.tokens is None or len(counts) < len(todo):
                report.tokens = report.embedded_tokens = None
            else:
                sent = counters.sent if counters is not None else range(len(todo))
                report.tokens += sum(counts)
                report.embedded_tokens = (report.embedded_tokens or 0) + sum(
                    counts[i] for i in sent)
        # A shorter new version of a document leaves old chunks n.. behind: find them via the
        # first id past the new end, delete only for those documents.
        sentinels = {f"{d}#{n}": d for d, n in ends.items()}
        for r in store.get(list(sentinels)):
            report.stale_deleted += store.delete(
                where={"doc_id": sentinels[r.id], "chunk": {"$gte": ends[sentinels[r.id]]}})
        if on_stored is not None and ids:
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
            report.documents += 1
            seen.check(doc, report.documents)
            if not store.holds_nul and has_nul([doc.id, doc.text, doc.metadata]):
                # named here, before any of it is written (the store's refusal named nothing)
                raise ValueError(f"{doc.origin or repr(doc.id)}: holds a NUL character, which "
                                 f"{type(store).__name__} cannot store; remove it")
            n = 0
            # Chunks stream in: a huge one-line file never holds all its chunks at once.
            for item in iter_chunk_payloads(doc, chunker):
                pending.append(item)
                n += 1
                report.chunks += 1
                if len(pending) >= config.batch_size:
                    flush()
            ends[doc.id] = n  # n == 0: an emptied document loses all its chunks
        flush()
    finally:
        if bar is not None:
            bar.close()
    if config.optimize and report.written + report.stale_deleted:
        store.optimize()
    if counters is not None:
        report.embedded = counters.embedded - e0[0]
        report.cached = counters.cached - e0[1]
        report.recomputed = counters.recomputed - e0[2]
        report.problems = list(counters.problems)
    report.seconds = time.perf_counter() - t0
    return report
