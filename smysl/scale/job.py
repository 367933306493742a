"""A resumable corpus embedding job: JSONL/CSV/Parquet rows in, a Parquet dataset or an index out.

The input is cut into shards: consecutive ranges of :attr:`JobConfig.shard_rows` records of each
file. A shard's output is committed whole or not at all — a Parquet file renamed into place, or
(for an index) a shard name recorded in the store's metadata after its chunks were upserted by
id — and named by the file's name and content (:func:`shard_name`), the record range, and the
job's :func:`job_fingerprint` (model fingerprint, dimensions, instruction, chunking, fields,
shard size). A rerun after a crash or Ctrl-C therefore computes only the shards not yet
committed; a file whose content changed gets new shards, and a Parquet folder holding the old
content's is refused (its rows would be there twice). Memory is bounded by one batch of texts
(and one shard's ids, to refuse a duplicate id within it; an index job keeps 16 bytes for each
id of its input, to refuse an id that another shard has).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
import secrets
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from smysl.base import BaseEmbedder, check_flag, fingerprint_of, positive_int
from smysl.files import machine_id, process_alive
from smysl.providers.errors import RejectedInputError
from smysl.providers.usage import count_of
from smysl.scale.ray_data import PartFailedError
from smysl.scale.sources import (
    JOB_MANIFEST,
    SUFFIXES,
    Row,
    Source,
    Stamp,
    check_unchanged,
    content_id,
    count_records,
    find_sources,
    read_rows,
)
from smysl.tokenize import InputTooLongError, check_counts
from smysl.toolkit.chunking import CHUNKER_VERSION, ChunkConfig, TokenChunker, chunker_for

MANIFEST = JOB_MANIFEST
#: A running job's claim on its Parquet folder, one file per process:
#: ``_smysl_run.FP.MACHINE.PID.TOKEN`` (JSON inside: pid, host, start).
RUN_PREFIX = "_smysl_run."
#: Store metadata: one key per shard committed to the store, ``embed_shard:FP:SHARD`` (FP the
#: job's fingerprint), so that drivers of one job add theirs without undoing each other's.
STORE_SHARD = "embed_shard:"
#: The earlier layout, one key (job fingerprint -> shard names); moved to the above on opening.
STORE_SHARDS = "embed_shards"
STORE_PREFIXES = ("lancedb:", "qdrant:", "postgres:", "postgres://", "postgresql://", "http://",
                  "https://")


class BadRowError(ValueError):
    """A broken input row (the message names the file and the row)."""


@dataclass(frozen=True)
class JobConfig:
    """What a job writes, and how it reads and embeds.

    Attributes:
        output: A folder for a Parquet dataset (columns ``id``, ``vector``, ``dimensions``,
            ``model`` (fingerprint), ``tokens``), or an index: ``lancedb:PATH``,
            ``qdrant:URL``, ``postgres:DSN`` / ``postgres://...``.
        id_field, text_field: The input columns holding each row's id and text.
        dimensions: Matryoshka size; None is the model's.
        instruction: Embed every text as a query with this instruction (resolved text, see
            :meth:`~smysl.base.BaseEmbedder.choose_instruction`); None embeds documents.
        chunk: Split texts into chunks (ids ``ROW-ID#n``); None embeds each row whole. An
            index always chunks (the toolkit's default sizes when None). A row with no text
            to chunk (empty or whitespace only) gives no chunk, and is counted in
            :attr:`JobReport.empty_rows`.
        truncate: Cut over-long texts at the model's limit instead of failing.
        shard_rows: Records per shard: the unit of resumption and of output files.
        batch_size: Texts per embedding call and write (bounds memory).
        skip_bad_rows: Report and skip broken rows instead of stopping at the first.
        table: Table or collection of an index output.
    """

    output: str
    id_field: str = "id"
    text_field: str = "text"
    dimensions: int | None = None
    instruction: str | None = None
    chunk: ChunkConfig | None = None
    truncate: bool = False
    shard_rows: int = 10_000
    batch_size: int = 256
    skip_bad_rows: bool = False
    table: str = "chunks"

    def __post_init__(self) -> None:
        # a float or "100" failed only mid-job, with the output folder made
        for name, count in (("shard_rows", self.shard_rows), ("batch_size", self.batch_size)):
            if positive_int(count) is None:
                raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
        check_flag(self.truncate, "truncate")  # "no" would read as True
        check_flag(self.skip_bad_rows, "skip_bad_rows")
        if self.dimensions is not None and positive_int(self.dimensions) is None:
            raise ValueError(f"dimensions must be a positive integer, got {self.dimensions!r}")
        if not self.output or self.output == "-":
            raise ValueError("an embedding job needs an output: a folder (Parquet dataset) or "
                             "an index (lancedb:PATH, qdrant:URL, postgres:DSN)")

    @property
    def to_store(self) -> bool:
        return is_store(self.output)

    @property
    def chunking(self) -> ChunkConfig | None:
        """How the job cuts texts: :attr:`chunk`, the toolkit's default for an index."""
        return self.chunk if self.chunk is not None or not self.to_store else ChunkConfig()


def is_store(output: str) -> bool:
    """Whether ``output`` names an index (``lancedb:``, ``qdrant:``, ``postgres:`` ...)."""
    return output.startswith(STORE_PREFIXES)


def shown_output(output: str) -> str:
    """``output`` as messages show it: an index by its place (never a DSN's password or a
    URL's user part), anything else as given."""
    if not is_store(output):
        return output
    from smysl.shown import shown_source
    from smysl.toolkit.store import StoreConfig
    from smysl.toolkit.stores import location

    config = StoreConfig.parse(output)
    return location(config) if config.backend == "postgres" else shown_source(output)


@dataclass
class JobReport:
    """What a job did."""

    output: str
    fingerprint: str
    #: What was embedded: rows, or their chunks when the job chunks (:attr:`unit`).
    texts: int = 0
    tokens: int | None = 0
    shards_written: int = 0
    shards_skipped: int = 0
    bad_rows: int = 0
    #: The first broken rows, "FILE, row N: problem".
    bad_examples: list[str] = field(default_factory=list)
    #: Rows that gave no chunk: nothing but whitespace to chunk (chunking jobs only).
    empty_rows: int = 0
    #: Chunks an index output already held as they are (not embedded again).
    unchanged: int = 0
    #: Chunks written with vectors from the embedding cache (not embedded again).
    cached: int = 0
    #: Files of the input folders that are not JSONL/CSV/Parquet, so not read.
    unread_files: list[str] = field(default_factory=list)
    #: Inputs with the same bytes as an earlier input of this run, "COPY = FIRST": their
    #: shards are that input's (counted as already done), their rows written once.
    copies: list[str] = field(default_factory=list)
    seconds: float = 0.0
    usage: str | None = None
    #: What :attr:`texts` counts, as the summary names it: "text" or "chunk".
    unit: str = "text"

    def interrupted(self) -> str:
        """The line for a job stopped by Ctrl-C (:class:`JobInterrupted`)."""
        return (f"interrupted after {self.seconds:.1f} s; shards: {self.shards_written} "
                f"written, {self.shards_skipped} already done -> {shown_output(self.output)}; "
                "the same command again resumes after them"
                + (f"; {self.usage}" if self.usage else ""))

    def summary(self) -> str:
        rate = (f", {self.tokens / self.seconds:,.0f} tokens/s" if self.tokens and self.seconds
                else "")
        tokens = f"{self.tokens:,} tokens" if self.tokens is not None else "tokens not counted"
        line = (f"embedded {count_of(self.texts, self.unit)} ({tokens}) in {self.seconds:.1f} s"
                f"{rate}; "
                f"shards: {self.shards_written} written, {self.shards_skipped} already done; "
                f"-> {shown_output(self.output)}")
        if self.unchanged:
            line += f"; {self.unchanged:,} chunk(s) already in the index, kept as they were"
        if self.cached:
            line += f"; {self.cached:,} chunk(s) written from the embedding cache"
        if not (self.texts or self.shards_skipped or self.bad_rows or self.empty_rows
                or self.unchanged or self.cached):
            line += "; the input held no rows"  # an empty file looked like a job done
        if self.bad_rows:
            line += f"; {count_of(self.bad_rows, 'bad row')} skipped"
        if self.empty_rows:
            line += f"; {count_of(self.empty_rows, 'empty row')} gave no chunks"
        if self.unread_files:
            line += f"; {unread_message(self.unread_files)}"
        if self.copies:
            line += (f"; {len(self.copies)} input file(s) with the same bytes as another, "
                     f"their rows written once: {', '.join(self.copies[:3])}"
                     + (" ..." if len(self.copies) > 3 else ""))
        return line + (f"; {self.usage}" if self.usage else "")


class JobInterrupted(KeyboardInterrupt):
    """A Ctrl-C during :func:`run_job` (a ``KeyboardInterrupt`` still): the shards committed
    until then are kept, and the same job run again resumes after them. ``report`` counts what
    this run had done (:attr:`JobReport.seconds` up to the interrupt)."""

    def __init__(self, report: JobReport) -> None:
        super().__init__(report.interrupted())
        self.report = report

    def __reduce__(self) -> tuple[type[JobInterrupted], tuple[JobReport]]:
        return type(self), (self.report,)  # pickled whole (a process pool, Ray)



def unread_message(files: Sequence[str]) -> str:
    """The files a folder held but the job does not read, named (the first ten)."""
    shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    kept = any(Path(f).suffix.lower() in SUFFIXES for f in files)  # in a folder named _...
    why = ("not .jsonl/.csv/.parquet, or in a folder whose name starts with _, as Spark's "
           "_temporary" if kept else "not .jsonl/.csv/.parquet")
    return f"{len(files)} files not read ({why}): {shown}"


def job_fingerprint(model: BaseEmbedder, config: JobConfig) -> str:
    """What makes two jobs' outputs interchangeable (shard files are named by it)."""
    return fingerprint_of(_identity(model, config))


def _identity(model: BaseEmbedder, config: JobConfig) -> dict[str, Any]:
    chunk = config.chunking
    # Parquet shards hold chunks by number (ROW#n), not their text: two cuttings must not mix
    # (an index's chunks carry their text, and ingestion re-cuts what changed; a job without
    # chunking keeps the identity, and the folders, it had before the version came)
    cutting = {"chunker": CHUNKER_VERSION} if config.chunk and not config.to_store else {}
    return {**cutting,
            "model": model.fingerprint(), "dimensions": config.dimensions or model.dimensions,
            # the text embedded with: a preset's name (the Python API) and its text (the CLI
            # resolves it) are one job, as "" and None are
            "instruction": model.choose_instruction(config.instruction),
            "chunk": asdict(chunk) if chunk else None,
            "id_field": config.id_field, "text_field": config.text_field,
            "truncate": config.truncate, "shard_rows": config.shard_rows,
            # where texts are cut (--truncate), chunks capped, and which rows are too long
            "max_tokens": model.max_tokens}


def source_key(source: Source) -> str:
    """16 hex digits naming an input file by its name as given (:attr:`Source.name`): shards
    of two contents under one key are two versions of one file. (8 digits were too few: two
    of 77,000 files shared a key as often as not, and the job stopped as if they were two
    versions of one.)"""
    return hashlib.sha256(source.name.encode()).hexdigest()[:16]


def shard_name(source: Source, content: str, part: int) -> str:
    """``STEM-KEY-CONTENT-pPART``: the file's stem (readable; never starting with ``.`` or
    ``_``, which Parquet readers skip), :func:`source_key`, its
    :func:`~smysl.scale.sources.content_id` and the record range."""
    return f"{_stem(source)}-{source_key(source)}-{content}-p{part:05d}"


def _stem(source: Source) -> str:
    """The readable start of a shard's name: the file's stem, made safe."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.name).stem).lstrip("._-")[:60]
    return stem or "input"


#: Parquet key-value metadata of a shard: the input's name as given, and its real path.
SOURCE_NAME, SOURCE_PATH = b"smysl.source", b"smysl.path"


def _one_file(a: str, b: str) -> bool:
    """Whether input names ``a`` and ``b`` (:attr:`Source.name`) may name one file reached
    from two folders: the shorter's path components end the longer's (``faq/faq.jsonl``
    given first, ``kb/faq/faq.jsonl`` later)."""
    pa, pb = a.split("/"), b.split("/")
    short, long = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
    return long[len(long) - len(short):] == short


class ShardName(NamedTuple):
    """A :func:`shard_name` read back."""

    key: str
    content: str
    part: int


_SHARD = re.compile(r".+-(?P<key>[0-9a-f]{16})-(?P<content>[0-9a-f]{12})-p(?P<part>\d{5,})")
#: A shard file of an earlier smysl: ``STEM-NAMEHASH-PART.FP.parquet`` (before content ids),
#: ``STEM-NAMEHASH8-CONTENT-pPART.FP.parquet`` (before 16-digit name keys).
_OLD_SHARD_FILE = re.compile(
    r".+-[0-9a-f]{8}-(?:\d{5,}|[0-9a-f]{12}-p\d{5,})\.[0-9a-f]{16}\.parquet")


def parse_shard(name: str) -> ShardName | None:
    """The parts of a :func:`shard_name` (None for any other name)."""
    m = _SHARD.fullmatch(name)
    return ShardName(m["key"], m["content"], int(m["part"])) if m else None


BadRowCallback = Callable[[str], None]


def run_job(model: BaseEmbedder, inputs: Sequence[str | Path], config: JobConfig, *,
            progress: bool = False, on_bad_row: BadRowCallback | None = None) -> JobReport:
    """Embed every row of ``inputs`` (files or folders) into ``config.output``; shards already
    committed by an earlier run of the same job are skipped (counted in the report). Files of
    a folder that are not JSONL/CSV/Parquet are warned about (``UserWarning``) and listed in
    the report."""
    unread: list[Path] = []
    sources = find_sources(inputs, unread)
    chunker = _check_settings(model, config)
    fp = job_fingerprint(model, config)
    report = JobReport(config.output, fp, unit="chunk" if config.chunking else "text",
                       unread_files=[str(p) for p in unread])
    if unread:
        warnings.warn(unread_message(report.unread_files), UserWarning, stacklevel=2)
    bad = _BadRows(config, report, on_bad_row)
    ids = _JobIds(sources) if config.to_store else None
    t0 = time.perf_counter()
    bar = None
    try:
        writer: _Writer = (_StoreWriter(model, config, fp) if config.to_store
                           else _ParquetWriter(model, config, fp, chunker))
        with writer:
            contents = writer.check(sources)  # a refused folder costs no embedding
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=sum(count_records(s) for s in sources), unit="row",
                           desc="embedding", smoothing=0.1)
            first: dict[str, Source] = {}  # content id -> the first input with those bytes
            for source in sources:
                # the file's stamp as it was hashed: a change after it stops the job as a
                # shard is about to be committed
                content, stamp = contents.get(source) or content_id(source)
                if (same := first.setdefault(content, source)) is not source:
                    # its shards are named by content: the first one's, done already
                    report.copies.append(f"{source.name} = {same.name}")
                rows = read_rows(source, config.id_field, config.text_field)
                for part, group in itertools.groupby(
                        rows, key=lambda r: (r.number - 1) // config.shard_rows):
                    name = shard_name(source, content, part)
                    if writer.done(name):
                        report.shards_skipped += 1
                        skipped = 0  # read past it: nothing re-checked, ids kept for an index
                        for row in group:
                            skipped += 1
                            if ids is not None and row.problem is None:
                                ids.first(source, row)
                        if bar is not None:
                            bar.update(skipped)
                        continue
                    writer.write(name, source, _checked(group, source, bad, bar, ids), report,
                                 bad, unchanged=functools.partial(check_unchanged, source,
                                                                  stamp))
                    report.shards_written += 1
    except KeyboardInterrupt as e:
        report.seconds = time.perf_counter() - t0
        with contextlib.suppress(Exception):  # the interrupt is what the caller must see
            report.usage = model.usage_report()  # what a paid API billed until then
        raise JobInterrupted(report) from e
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - t0
    report.usage = model.usage_report()
    return report


def _check_settings(model: BaseEmbedder, config: JobConfig) -> TokenChunker | None:
    """The job's settings checked against the model before any output exists (a bad one must
    not leave a folder or an index that the corrected rerun finds in its way); returns the
    job's chunker, None when rows are embedded whole."""
    model.check_dimensions(config.dimensions)
    # a model that takes none refuses one; "" is none
    if config.to_store and model.choose_instruction(config.instruction) is not None:
        raise ValueError("an index stores documents: embed queries (an instruction) into a "
                         "Parquet folder instead")
    chunk = config.chunking
    return (chunker_for(model, chunk, instruction=config.instruction) if chunk is not None
            else None)


class _BadRows:
    """The one rule for a broken row: the job stops naming it, or with ``skip_bad_rows`` it is
    reported, counted and left out."""

    def __init__(self, config: JobConfig, report: JobReport,
                 on_bad_row: BadRowCallback | None) -> None:
        self.skip, self.report, self.on_bad_row = config.skip_bad_rows, report, on_bad_row

    def __call__(self, source: Source, row: Row, problem: str) -> None:
        """Raises :class:`BadRowError` unless broken rows are skipped."""
        where = f"{source.path}, row {row.number}: {problem}"
        if not self.skip:
            # shards are named by their file's whole content: an edited file is a new version
            raise BadRowError(f"{where}; report and skip broken rows (--skip-bad-rows / "
                              "skip_bad_rows=True), or fix the row (the edited file is "
                              "another version: the rerun names this version's shards "
                              "written so far, to delete, or write to a new folder)")
        self.report.bad_rows += 1
        if len(self.report.bad_examples) < 20:
            self.report.bad_examples.append(where)
        if self.on_bad_row is not None:
            self.on_bad_row(where)


class _JobIds:
    """Every row id of an index job's input, read this run (committed shards are read past, so
    they count too): in an index a second row of one id would replace the first's chunks.
    16 bytes an id (:class:`~smysl.toolkit.ingest.SeenIds`)."""

    #: A row's place packed in one int64: source index above, row number below.
    ROW_BITS = 40

    def __init__(self, sources: Sequence[Source]) -> None:
        from smysl.toolkit.ingest import SeenIds

        self.seen = SeenIds()
        self.sources = list(sources)
        self.index = {s: i for i, s in enumerate(self.sources)}

    def first(self, source: Source, row: Row) -> str | None:
        """Record ``row``'s id; where another row had it first ("FILE, row N"), else None."""
        at = self.seen.add(row.id, self.index[source] << self.ROW_BITS | row.number)
        if at is None:
            return None
        return f"{self.sources[at >> self.ROW_BITS].path}, row {at & ((1 << self.ROW_BITS) - 1)}"


def _checked(rows: Iterable[Row], source: Source, bad: _BadRows, bar: Any,
             ids: _JobIds | None) -> Iterator[Row]:
    """The good rows; a broken one goes to ``bad`` (which raises, or leaves it out)."""
    seen: dict[str, int] = {}  # one shard's ids and rows: a duplicate would be written twice
    for row in rows:
        if bar is not None:
            bar.update(1)
        problem = row.problem
        if problem is None and row.id in seen:
            problem = f"duplicate id {row.id!r} (first at {source.path}, row {seen[row.id]})"
        if problem is None and ids is not None and (first := ids.first(source, row)):
            problem = (f"duplicate id {row.id!r} (first at {first}): in an index it would "
                       "replace that row")
        if problem is not None:
            bad(source, row, problem)
            continue
        seen[row.id] = row.number
        yield row


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while batch := list(itertools.islice(it, size)):
        yield batch


class _Writer:
    def check(self, sources: Sequence[Source]) -> dict[Source, tuple[str, Stamp]]:
        """Refuse what the output holds that this run would contradict; the
        :func:`~smysl.scale.sources.content_id` of each source it has hashed for that."""
        return {}

    def done(self, name: str) -> bool:
        raise NotImplementedError

    def write(self, name: str, source: Source, rows: Iterable[Row], report: JobReport,
              bad: _BadRows, *, unchanged: Callable[[], None] = lambda: None) -> None:
        """Embed ``rows`` into shard ``name`` and commit it; ``unchanged`` raises, just before
        the commit, if the file changed while its rows were read (:func:`~smysl.scale.sources.
        check_unchanged`): that shard is then left out."""
        raise NotImplementedError

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


#: The text sent to tell a provider's refusal of a row's text from one of every request.
_PROBE = "probe"


@dataclass
class _Batch:
    """What one batch of rows embeds: ids, texts and token counts, and the row of each text."""

    rows: list[Row]
    ids: list[str]
    texts: list[str]
    tokens: list[int] | None
    owners: list[int]  # index in ``rows`` of each text's row

    def without(self, row: int) -> _Batch:
        keep = [i for i, r in enumerate(self.owners) if r != row]
        return _Batch(self.rows, [self.ids[i] for i in keep], [self.texts[i] for i in keep],
                      None if self.tokens is None else [self.tokens[i] for i in keep],
                      [self.owners[i] for i in keep])


#: A run file (:data:`RUN_PREFIX`) and a shard's temporary file, read back.
_RUN_FILE = re.compile(re.escape(RUN_PREFIX)
                       + r"(?P<fp>[0-9a-f]{16})\.(?P<machine>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]+")
_TEMP_FILE = re.compile(r"\..+\.(?P<machine>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]+\.tmp")


class _ParquetWriter(_Writer):
    """One Parquet file per shard, written to a hidden temporary name of this process's own and
    renamed when whole.

    A running job holds a run file in the folder (:data:`RUN_PREFIX`, one per process; several
    drivers of one job share a folder). The folder's manifest (the job's identity) is written
    at the start; a folder whose manifest names another job is refused while that job runs or
    once it committed a shard, and taken over otherwise (it failed before committing
    anything: the corrected rerun must not find it in its way). A run file or a temporary file
    is removed by another run only when its process is certainly gone: on this machine, its
    pid not running."""

    def __init__(self, model: BaseEmbedder, config: JobConfig, fp: str,
                 chunker: TokenChunker | None) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("Parquet output needs pyarrow: pip install 'smysl[toolkit]'") from e
        self.pa, self.pq = pa, pq
        self.model, self.config, self.fp, self.chunker = model, config, fp, chunker
        self.dims = config.dimensions or model.dimensions
        self.model_fp = model.fingerprint()
        self.dir = Path(config.output).expanduser()
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"{self.dir}: the output must be a folder (a Parquet dataset)")
        if self.dir.is_dir() and not (self.dir / MANIFEST).exists():
            foreign = sorted(p.name for p in self.dir.glob("*.parquet")
                             if not p.name.startswith(("_", ".")))
            if foreign:  # a reader of the folder would take them for rows of this dataset
                raise ValueError(f"{self.dir} holds Parquet files no smysl job wrote "
                                 f"({foreign[0]}{', ...' if len(foreign) > 1 else ''}); a "
                                 f"reader of the folder would mix their rows with the "
                                 f"vectors: write to an empty folder")
        self.identity = {"fingerprint": fp, "model_name": model.name, **_identity(model, config)}
        self.manifest = self.dir / MANIFEST
        self.dir.mkdir(parents=True, exist_ok=True)
        self.machine, self.pid = machine_id(), os.getpid()
        self.token = secrets.token_hex(4)
        self.parts: set[tuple[str, int]] = set()  # (content, part) of every committed shard
        #: What the first shard of a key records of its input (real path, name): _same_file.
        self._recorded: dict[str, tuple[str, str]] = {}
        self.run_file = self.dir / f"{RUN_PREFIX}{fp[:16]}.{self.machine}.{self.pid}.{self.token}"
        self._register()
        try:
            self._sweep()
            self._claim()
        except BaseException:
            self.run_file.unlink(missing_ok=True)
            raise
        self.schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), self.dims)),
                                 ("dimensions", pa.int32()), ("model", pa.string()),
                                 ("tokens", pa.int32())])

    def _register(self) -> None:
        """Create this process's run file (O_EXCL: never another's)."""
        about = {"fingerprint": self.fp, "pid": self.pid, "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        fd = os.open(self.run_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(about, f)

    def _gone(self, machine: str, pid: str) -> bool:
        return machine == self.machine and not process_alive(int(pid))

    def _sweep(self) -> None:
        """Remove run and temporary files of processes certainly gone."""
        for p in self.dir.iterdir():
            m = _RUN_FILE.fullmatch(p.name) or _TEMP_FILE.fullmatch(p.name)
            if m and self._gone(m["machine"], m["pid"]):
                p.unlink(missing_ok=True)

    def _other_run(self) -> str | None:
        """Another job running on the folder ("pid N on HOST since T (FILE)"), else None."""
        for p in sorted(self.dir.glob(f"{RUN_PREFIX}*")):
            m = _RUN_FILE.fullmatch(p.name)
            if m is None or m["fp"] == self.fp[:16]:
                continue
            try:
                about = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                about = {}
            return (f"pid {m['pid']} on {about.get('host', 'another machine')} since "
                    f"{about.get('started', '?')} ({p})")
        return None

    def _same_job(self) -> bool:
        """Whether the folder's manifest names this job (False: there is none, or it names a
        job that committed no shard here); raises while another job runs (its run file was
        there before this one's, or the two started at once and both give way) and for a
        folder holding another job's shards."""
        try:
            old = json.loads(self.manifest.read_text(encoding="utf-8"))
        except FileNotFoundError:
            old = None
        except (OSError, ValueError):
            old = {}
        same = old is not None and old.get("fingerprint") == self.fp
        differ = sorted(k for k in self.identity if old is not None and not same
                        and k in old and old[k] != self.identity[k]
                        and k not in ("fingerprint", "model_name"))
        # a setting an earlier smysl did not record (the chunker's version, max_tokens): not
        # one the user changed, so not named as a difference
        unrecorded = sorted(k for k in self.identity if old is not None and not same
                            and "model" in old and k not in old)
        if old is None or same:
            what = "another job"
        elif differ == ["chunker"]:  # no setting of the user's
            what = (f"a job of a smysl that cut chunks elsewhere (chunker version "
                    f"{old['chunker']}, this one's {self.identity['chunker']})")
        elif differ:
            what = f"another job (it differs in: {', '.join(differ)})"
        elif unrecorded:
            what = (f"a job of an earlier smysl, which did not record {', '.join(unrecorded)} "
                    "(its output may not match this version's)")
        else:
            what = "another job (it differs in: fingerprint)"
        # also when the manifest names this job: another job may have registered and be
        # about to replace it (each gives way to the other's run file)
        running = self._other_run()
        if running is not None:
            raise ValueError(f"{self.dir} is being written by {what}: {running}; wait for "
                             "it or write to a new folder (if that job is gone, delete its "
                             "file)")
        if same:
            return True
        if old is None or not any(self.dir.glob("*.parquet")):
            return False
        raise ValueError(f"{self.dir} holds the output of {what}; write to a new folder")

    def _claim(self) -> None:
        """Write this job's manifest unless the folder's names it already."""
        if self._same_job():
            return
        # a temporary name of this process's own (on any machine sharing the folder; swept
        # as a temporary file once the process is gone)
        tmp = self.manifest.with_name(f".{MANIFEST}.{self.machine}.{self.pid}.{self.token}.tmp")
        tmp.write_text(json.dumps(self.identity, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.manifest)

    def check(self, sources: Sequence[Source]) -> dict[Source, tuple[str, Stamp]]:
        """Refuse shards of an earlier smysl (named without content ids: which are current
        cannot be told) and shards of another version of an input file (its rows would be in
        the folder twice); hashes the sources the folder has shards of."""
        suffix = self.suffix
        known: dict[str, dict[str, list[str]]] = {}  # key -> content -> shard files
        for p in sorted(self.dir.glob("*.parquet")):
            shard = parse_shard(p.name[:-len(suffix)]) if p.name.endswith(suffix) else None
            if shard is not None:
                known.setdefault(shard.key, {}).setdefault(shard.content, []).append(p.name)
                self.parts.add((shard.content, shard.part))
            elif _OLD_SHARD_FILE.fullmatch(p.name):
                raise ValueError(f"{self.dir} holds shards written by an earlier smysl, named "
                                 f"otherwise (e.g. {p.name}): a rerun cannot tell which "
                                 "inputs they hold. Write to a new folder, or delete its "
                                 "*.parquet files to embed everything again")
        contents: dict[Source, tuple[str, Stamp]] = {}
        keys = {source_key(s) for s in sources}
        for s in sources:
            versions = known.get(source_key(s))
            if not versions:  # a name new here: the same file reached from another folder?
                versions = self._same_file(s, {k: v for k, v in known.items()
                                               if k not in keys})
            if not versions:
                continue
            contents[s] = content_id(s)
            content = contents[s][0]
            old = {c: files for c, files in versions.items() if c != content}
            if old:
                # STEM-KEY-CONTENT-p*: exactly the shards of that version
                patterns = " ".join(f"'{self.dir / files[0].rsplit('-', 1)[0]}'-p*{suffix}"
                                    for files in old.values())
                raise ValueError(
                    f"{s.path}: {self.dir} holds {sum(map(len, old.values()))} shard file(s) "
                    f"of another version of {s.name!r} (e.g. {min(min(old.values()))}): the "
                    f"file changed since they were written (or another input of that name "
                    f"was embedded), and its rows would be there twice. To embed this "
                    f"version, delete them (rm {patterns}), or write to a new folder")
        return contents

    def _same_file(self, source: Source, others: dict[str, dict[str, list[str]]]
                   ) -> dict[str, list[str]]:
        """The shards (content -> files) that ``source`` wrote under another name: one
        version of a file given first within its folder (``-i kb/faq``), then within the
        folder above (``-i kb``), was a name new to the folder, and an edit between the runs
        left every row of both versions there. Known by the real path or the name that
        each shard records (shards of an earlier smysl record none)."""
        stem = _stem(source)
        for key, versions in others.items():
            first = min(min(versions.values()))
            if not first.startswith(f"{stem}-{key}-"):
                continue
            if key not in self._recorded:  # one footer a key, however many sources ask
                try:
                    meta = self.pq.read_schema(self.dir / first).metadata or {}
                except Exception:  # a damaged shard is no version to name here
                    meta = {}
                self._recorded[key] = (os.fsdecode(meta.get(SOURCE_PATH, b"")),
                                       meta.get(SOURCE_NAME, b"").decode("utf-8", "replace"))
            path, name = self._recorded[key]
            if path and os.path.exists(path):  # the file it was: this one, or another
                if os.path.samefile(path, source.path):
                    return versions
                continue
            if name and _one_file(name, source.name):  # gone, or another machine's path
                return versions
        return {}

    def _no_other_version(self, name: str, source: Source) -> None:
        """Refuse to commit ``name`` beside a shard of another version of its file that a
        driver running at the same time committed since :meth:`check` (two drivers given
        folders of one name holding files of one name): each would count the other's
        shards as done on a rerun, or ask to delete them."""
        shard = parse_shard(name)
        if shard is None:
            return
        suffix = self.suffix
        for p in self.dir.glob(f"*-{shard.key}-*{suffix}"):
            other = parse_shard(p.name[:-len(suffix)])
            if other is not None and other.key == shard.key and other.content != shard.content:
                raise ValueError(
                    f"{source.path}: another driver committed {p.name} to {self.dir}, a shard "
                    f"of another file named {source.name!r}: two inputs of one name (their "
                    "folder's and their own) would mix their rows. Give each driver a folder "
                    "of its own name, or write to separate outputs")

    @property
    def suffix(self) -> str:
        """What follows a shard's name in its file's: this job's fingerprint."""
        return f".{self.fp[:16]}.parquet"

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}{self.suffix}"

    def done(self, name: str) -> bool:
        shard = parse_shard(name)
        return shard is not None and (shard.content, shard.part) in self.parts

    def _batch(self, rows: list[Row], source: Source, report: JobReport,
               bad: _BadRows) -> _Batch:
        if self.chunker is None:
            texts = [r.text for r in rows]
            return _Batch(rows, [r.id for r in rows], texts,
                          embedded_tokens(self.model, texts, self.config.instruction,
                                          self.config.truncate),
                          list(range(len(rows))))
        ids, texts, tokens, owners = [], [], [], []
        counted = self.chunker.exact  # an approximated count is not recorded as one
        for i, r in enumerate(rows):
            try:
                chunks = list(self.chunker.iter_split(r.text))
            except ValueError as e:  # a character that no chunk of this size holds
                bad(source, r, str(e))
                continue
            if not chunks:
                report.empty_rows += 1
            for c in chunks:
                ids.append(f"{r.id}#{c.index}")
                texts.append(c.text)
                tokens.append(c.tokens or 0)
                owners.append(i)
        return _Batch(rows, ids, texts, tokens if counted else None, owners)

    def _embed(self, batch: _Batch, source: Source, bad: _BadRows) -> tuple[_Batch, np.ndarray]:
        """The batch's vectors; a text the model refuses as too long, or a provider refuses
        on its own (its 400), is its row's problem (named by file and row, or that row alone
        left out), not the batch's.

        Where the batch's token counts are known, the length rule is applied to them first:
        on Ray each actor embeds its part at once, and one part refused as too long threw
        the others' away, to be embedded again (a paid provider billed them twice)."""
        limit = self.model.max_tokens
        while True:
            try:
                if batch.tokens is not None and limit is not None and not self.config.truncate:
                    check_counts(batch.tokens, limit)
                return batch, self.model.embed(batch.texts, instruction=self.config.instruction,
                                               dimensions=self.config.dimensions,
                                               truncate=self.config.truncate)
            except InputTooLongError as e:
                row, what = self._text_of(batch, e.index)
                # truncation is a setting of the job's output: the rerun it advised was then
                # refused as "another job" in the folder the shards so far were written to
                bad(source, row, e.describe(what, audience="cli")
                    + " (with --truncate it is another job: write it to a new folder)")
                batch = batch.without(batch.owners[e.index])
            except RejectedInputError as e:
                if e.refused is None:
                    raise
                if not e.done:
                    self._check_requests(source, batch, e)
                row, what = self._text_of(batch, e.refused)
                bad(source, row, f"{self.model.name} refused {what}: {e.brief()}")
                batch = batch.without(batch.owners[e.refused])
            except PartFailedError as e:  # its texts named by their rows, not their places
                rows = [batch.rows[batch.owners[i]] for i in range(e.start, e.stop)]
                raise RuntimeError(
                    f"{source.path}, rows {rows[0].number}..{rows[-1].number} (ids "
                    f"{rows[0].id!r}..{rows[-1].id!r}): {e}") from None

    def _text_of(self, batch: _Batch, index: int) -> tuple[Row, str]:
        """The row of the batch's text ``index``, and the text named for a message."""
        row = batch.rows[batch.owners[index]]
        return row, (f"the text of id {row.id!r}" if self.chunker is None
                     else f"chunk {batch.ids[index]!r}")

    def _check_requests(self, source: Source, batch: _Batch, e: RejectedInputError) -> None:
        """A provider refused a text and embedded none of the call's: the text, or any
        request of this job's settings (a field it refuses)? Its halving search ends at the
        first text either way, so one short text of no row's is sent to tell; refused too,
        the job stops (else every row would be reported bad, one after another)."""
        try:
            self.model.embed([_PROBE], instruction=self.config.instruction,
                             dimensions=self.config.dimensions, truncate=self.config.truncate)
        except RejectedInputError as again:
            first, last = batch.rows[batch.owners[0]], batch.rows[batch.owners[-1]]
            raise RuntimeError(
                f"{source.path}, rows {first.number}..{last.number}: {self.model.name} "
                f"refused a text of them ({e.brief()}), and the text "
                f"{_PROBE!r} as well ({again.brief()}): it refuses this "
                "job's requests, not a row") from e

    def write(self, name: str, source: Source, rows: Iterable[Row], report: JobReport,
              bad: _BadRows, *, unchanged: Callable[[], None] = lambda: None) -> None:
        pa = self.pa
        final = self._path(name)
        tmp = final.with_name(f".{final.name}.{self.machine}.{self.pid}.{self.token}.tmp")
        try:
            # which input it holds, for a rerun that reaches the file under another name
            schema = self.schema.with_metadata({
                SOURCE_NAME: source.name.encode("utf-8", "surrogateescape"),
                SOURCE_PATH: os.fsencode(os.path.realpath(source.path))})
            with self.pq.ParquetWriter(tmp, schema) as out:
                for group in _batches(rows, self.config.batch_size):
                    batch, vectors = self._embed(self._batch(group, source, report, bad),
                                                 source, bad)
                    ids, tokens = batch.ids, batch.tokens
                    out.write_table(pa.table({
                        "id": pa.array(ids, pa.string()),
                        "vector": pa.FixedSizeListArray.from_arrays(
                            pa.array(np.ascontiguousarray(vectors, np.float32).ravel(),
                                     pa.float32()), self.dims),
                        "dimensions": pa.array([self.dims] * len(ids), pa.int32()),
                        "model": pa.array([self.model_fp] * len(ids), pa.string()),
                        "tokens": pa.array(tokens if tokens is not None else [None] * len(ids),
                                           pa.int32()),
                    }, schema=schema))
                    report.texts += len(ids)
                    report.tokens = (report.tokens + sum(tokens)
                                     if tokens is not None and report.tokens is not None
                                     else None)
            unchanged()
            self._no_other_version(name, source)
            os.replace(tmp, final)  # the shard appears whole or not at all
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shard = parse_shard(name)
        if shard is not None:
            self.parts.add((shard.content, shard.part))
            self._one_copy(shard)

    def _one_copy(self, shard: ShardName) -> None:
        """Drivers running at once on overlapping inputs (``corpus/`` and ``corpus/sub/``)
        reach one file under two names and each committed its shards: every row twice. Of the
        shard files of one content and part, the first by name stays; each driver deletes the
        others after its commit, so whichever commits last sees them all."""
        same = sorted(self.dir.glob(f"*-{shard.content}-p{shard.part:05d}{self.suffix}"))
        for extra in same[1:]:
            extra.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.run_file.unlink(missing_ok=True)


def embedded_tokens(model: BaseEmbedder, texts: list[str], instruction: str | None,
                    truncate: bool) -> list[int] | None:
    """Tokens each text costs as embedded: EOS included, the query template with an
    instruction (what a chunk's count is too), and with ``truncate`` at most the model's
    limit, where the model cuts; None for a backend without a tokenizer."""
    try:
        counts = model.count_tokens(model.format_texts(texts, instruction))
    except NotImplementedError:
        return None
    if truncate and model.max_tokens is not None:
        return [min(c, model.max_tokens) for c in counts]
    return counts


class _StoreWriter(_Writer):
    """Shards ingested into an index (chunks upserted by id); the shard's name is recorded in
    the store's metadata once its chunks are stored. A file that changed since its shards were
    committed is ingested again: its rows' chunks are replaced by id (unchanged chunks kept,
    as `smysl index add` does); rows it no longer has stay in the index."""

    def __init__(self, model: BaseEmbedder, config: JobConfig, fp: str) -> None:
        from smysl.toolkit.index import Index, IndexConfig
        from smysl.toolkit.store import StoreConfig

        self.model, self.config, self.fp = model, config, fp
        store = StoreConfig.parse(config.output, table=config.table)
        self.index = Index.create_or_open(model, IndexConfig(store=store,
                                                             dimensions=config.dimensions))
        self.prefix = f"{STORE_SHARD}{fp}:"
        self.parts: set[tuple[str, int]] | None = None  # (content, part) of committed shards
        old = self.index.store.read_meta().get(STORE_SHARDS)
        if old is not None:  # written by an earlier smysl: one key per shard from now on
            self.index.store.update_meta({STORE_SHARDS: None, **{
                f"{STORE_SHARD}{job}:{name}": True for job, names in
                (old.items() if isinstance(old, dict) else ())
                if isinstance(names, list) for name in names if isinstance(name, str)}})

    def _committed(self) -> list[str]:
        """The names of this job's shards committed to the store."""
        return [k[len(self.prefix):] for k in self.index.store.read_meta()
                if k.startswith(self.prefix)]

    def done(self, name: str) -> bool:
        if self.parts is None:  # read once: a lookup per shard, not a scan of every name
            self.parts = {(s.content, s.part) for s in map(parse_shard, self._committed())
                          if s is not None}
        shard = parse_shard(name)
        return shard is not None and (shard.content, shard.part) in self.parts

    def write(self, name: str, source: Source, rows: Iterable[Row], report: JobReport,
              bad: _BadRows, *, unchanged: Callable[[], None] = lambda: None) -> None:
        from smysl.toolkit.ingest import Document, IngestConfig

        row_ids: list[str] = []
        chunked: set[str] = set()  # ids of the rows that gave chunks

        def documents() -> Iterator[Document]:
            for batch in _batches(rows, self.config.batch_size):
                row_ids.extend(r.id for r in batch)
                yield from (Document(r.id, r.text) for r in batch)

        done = self.index.add(
            documents(), IngestConfig(chunk=self.config.chunking or ChunkConfig(),
                                      batch_size=self.config.batch_size,
                                      dimensions=self.config.dimensions, optimize=False),
            on_stored=lambda ids: chunked.update(i.rpartition("#")[0] for i in ids))
        # what was embedded: the chunks' tokens (overlaps and each chunk's EOS included),
        # not the rows'; chunks already in the index (an appended file's old rows, a resumed
        # shard's) or in the cache were not
        report.texts += done.embedded
        report.unchanged += done.unchanged
        report.cached += done.cached
        report.empty_rows += sum(1 for i in row_ids if i not in chunked)
        report.tokens = (report.tokens + done.embedded_tokens
                         if report.tokens is not None and done.embedded_tokens is not None
                         else None)
        this = parse_shard(name)

        def dropped(key: str) -> bool:
            """A record this commit outdates: this job's shards of the file's earlier
            versions, and another job's of this version (its chunks of these rows were just
            replaced by this job's, another chunking say: a rerun of that job must not call
            its shards done over them)."""
            if this is None or not key.startswith(STORE_SHARD):
                return False
            s = parse_shard(key[len(STORE_SHARD):].partition(":")[2])
            if s is None:
                return False
            if key.startswith(self.prefix):
                return s.key == this.key and s.content != this.content
            return s.content == this.content

        unchanged()
        # only this shard's key and the outdated ones change: another driver's commits stay
        self.index.store.update_meta({**{k: None for k in self.index.store.read_meta()
                                         if dropped(k)},
                                      self.prefix + name: True})
        if self.parts is not None and this is not None:
            self.parts.add((this.content, this.part))

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.index.store.optimize()
        finally:
            self.index.close()
