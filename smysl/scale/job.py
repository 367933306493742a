"""A resumable corpus embedding job: JSONL/CSV/Parquet rows in, a Parquet dataset or an index out.

The input is cut into shards: consecutive ranges of :attr:`JobConfig.shard_rows` records of each
file. A shard's output is committed whole or not at all — a Parquet file renamed into place, or
(for an index) a shard name recorded in the store's metadata after its chunks were upserted by
id — and named by the shard and the job's :func:`job_fingerprint` (model fingerprint,
dimensions, instruction, chunking, fields, shard size). A rerun after a crash or Ctrl-C
therefore computes only the shards not yet committed, and no id is written twice. Memory is
bounded by one batch of texts (and one shard's ids, to refuse a duplicate id within it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder, fingerprint_of
from smysl.pooling import check_dimensions
from smysl.scale.sources import Row, Source, count_records, find_sources, read_rows
from smysl.tokenize import InputTooLongError
from smysl.toolkit.chunking import ChunkConfig, TokenChunker, chunker_for

MANIFEST = "_smysl_job.json"
#: Store metadata key: job fingerprint -> names of the shards committed to the store.
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
        if self.shard_rows < 1 or self.batch_size < 1:
            raise ValueError("shard_rows and batch_size must be >= 1")
        if not self.output or self.output == "-":
            raise ValueError("an embedding job needs an output: a folder (Parquet dataset) or "
                             "an index (lancedb:PATH, qdrant:URL, postgres:DSN)")

    @property
    def to_store(self) -> bool:
        return self.output.startswith(STORE_PREFIXES)

    @property
    def chunking(self) -> ChunkConfig | None:
        """How the job cuts texts: :attr:`chunk`, the toolkit's default for an index."""
        return self.chunk if self.chunk is not None or not self.to_store else ChunkConfig()


@dataclass
class JobReport:
    """What a job did."""

    output: str
    fingerprint: str
    texts: int = 0
    tokens: int | None = 0
    shards_written: int = 0
    shards_skipped: int = 0
    bad_rows: int = 0
    #: The first broken rows, "FILE, row N: problem".
    bad_examples: list[str] = field(default_factory=list)
    #: Rows that gave no chunk: nothing but whitespace to chunk (chunking jobs only).
    empty_rows: int = 0
    seconds: float = 0.0
    usage: str | None = None

    def summary(self) -> str:
        rate = (f", {self.tokens / self.seconds:,.0f} tokens/s" if self.tokens and self.seconds
                else "")
        tokens = f"{self.tokens:,} tokens" if self.tokens is not None else "tokens not counted"
        line = (f"embedded {self.texts:,} texts ({tokens}) in {self.seconds:.1f} s{rate}; "
                f"shards: {self.shards_written} written, {self.shards_skipped} already done; "
                f"-> {self.output}")
        if self.bad_rows:
            line += f"; {self.bad_rows} bad rows skipped"
        if self.empty_rows:
            line += f"; {self.empty_rows} empty rows gave no chunks"
        return line + (f"; {self.usage}" if self.usage else "")


def job_fingerprint(model: BaseEmbedder, config: JobConfig) -> str:
    """What makes two jobs' outputs interchangeable (shard files are named by it)."""
    return fingerprint_of(_identity(model, config))


def _identity(model: BaseEmbedder, config: JobConfig) -> dict[str, Any]:
    chunk = config.chunking
    return {"model": model.fingerprint(), "dimensions": config.dimensions or model.dimensions,
            "instruction": config.instruction, "chunk": asdict(chunk) if chunk else None,
            "id_field": config.id_field, "text_field": config.text_field,
            "truncate": config.truncate, "shard_rows": config.shard_rows}


def shard_name(source: Source, part: int) -> str:
    """``STEM-HASH-PART``: readable, and unique per input file and record range."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.name).stem)[:60] or "input"
    digest = hashlib.sha256(source.name.encode()).hexdigest()[:8]
    return f"{stem}-{digest}-{part:05d}"


BadRowCallback = Callable[[str], None]


def run_job(model: BaseEmbedder, inputs: Sequence[str | Path], config: JobConfig, *,
            progress: bool = False, on_bad_row: BadRowCallback | None = None) -> JobReport:
    """Embed every row of ``inputs`` (files or folders) into ``config.output``; shards already
    committed by an earlier run of the same job are skipped (counted in the report)."""
    sources = find_sources(inputs)
    chunker = _check_settings(model, config)
    fp = job_fingerprint(model, config)
    report = JobReport(config.output, fp)
    bad = _BadRows(config, report, on_bad_row)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(count_records(s) for s in sources), unit="row", desc="embedding",
                   smoothing=0.1)
    try:
        writer: _Writer = (_StoreWriter(model, config, fp) if config.to_store
                           else _ParquetWriter(model, config, fp, chunker))
        with writer:
            for source in sources:
                rows = read_rows(source, config.id_field, config.text_field)
                for part, group in itertools.groupby(
                        rows, key=lambda r: (r.number - 1) // config.shard_rows):
                    name = shard_name(source, part)
                    if writer.done(name):
                        report.shards_skipped += 1
                        skipped = sum(1 for _ in group)  # read past it: nothing re-checked
                        if bar is not None:
                            bar.update(skipped)
                        continue
                    writer.write(name, source, _checked(group, source, bad, bar), report, bad)
                    report.shards_written += 1
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
    check_dimensions(config.dimensions, model.dimensions, minimum=model.min_dimensions)
    model.choose_instruction(config.instruction)  # a model that takes none refuses one
    if config.to_store and config.instruction is not None:
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
            raise BadRowError(f"{where}; fix the row, or report and skip broken rows "
                              f"(--skip-bad-rows / skip_bad_rows=True)")
        self.report.bad_rows += 1
        if len(self.report.bad_examples) < 20:
            self.report.bad_examples.append(where)
        if self.on_bad_row is not None:
            self.on_bad_row(where)


def _checked(rows: Iterable[Row], source: Source, bad: _BadRows, bar: Any) -> Iterator[Row]:
    """The good rows; a broken one goes to ``bad`` (which raises, or leaves it out)."""
    seen: set[str] = set()  # one shard's ids: a duplicate would be written twice
    for row in rows:
        if bar is not None:
            bar.update(1)
        problem = row.problem
        if problem is None and row.id in seen:
            problem = f"duplicate id {row.id!r} (first seen earlier in this shard)"
        if problem is not None:
            bad(source, row, problem)
            continue
        seen.add(row.id)
        yield row


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while batch := list(itertools.islice(it, size)):
        yield batch


class _Writer:
    def done(self, name: str) -> bool:
        raise NotImplementedError

    def write(self, name: str, source: Source, rows: Iterable[Row], report: JobReport,
              bad: _BadRows) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


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


class _ParquetWriter(_Writer):
    """One Parquet file per shard, written to a hidden temporary name and renamed when whole.
    The folder's manifest (the job's identity) is written at the start, so another job is
    refused while this one runs; a folder whose manifest names another job but that holds no
    shard is taken over (that job failed before committing anything: the corrected rerun
    must not find it in its way)."""

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
        self.identity = {"fingerprint": fp, "model_name": model.name, **_identity(model, config)}
        self.manifest = self.dir / MANIFEST
        self.dir.mkdir(parents=True, exist_ok=True)
        self._claim()
        # an interrupted run's partial shard (this job's: the name holds its fingerprint)
        for stale in self.dir.glob(f".*.{fp[:16]}.parquet.tmp"):
            stale.unlink()
        self.schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), self.dims)),
                                 ("dimensions", pa.int32()), ("model", pa.string()),
                                 ("tokens", pa.int32())])

    def _same_job(self) -> bool:
        """Whether the folder's manifest names this job (False: there is none, or it names a
        job that committed no shard here); another job's with shards raises."""
        if not self.manifest.is_file():
            return False
        try:
            old = json.loads(self.manifest.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if old.get("fingerprint") == self.fp:
            return True
        if not any(self.dir.glob("*.parquet")):
            return False
        differ = sorted(k for k in self.identity if old.get(k) != self.identity[k]
                        and k not in ("fingerprint", "model_name"))
        raise ValueError(f"{self.dir} holds the output of another job (it differs in: "
                         f"{', '.join(differ) or 'fingerprint'}); write to a new folder")

    def _claim(self) -> None:
        """Write this job's manifest unless the folder's names it already."""
        if self._same_job():
            return
        # a temporary name of this process's own: two runs starting at once do not share it
        tmp = self.manifest.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.identity, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.manifest)

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.{self.fp[:16]}.parquet"

    def done(self, name: str) -> bool:
        return self._path(name).is_file()

    def _batch(self, rows: list[Row], source: Source, report: JobReport,
               bad: _BadRows) -> _Batch:
        if self.chunker is None:
            texts = [r.text for r in rows]
            return _Batch(rows, [r.id for r in rows], texts,
                          _tokens(self.model, texts, self.config.instruction),
                          list(range(len(rows))))
        ids, texts, tokens, owners = [], [], [], []
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
                tokens.append(c.tokens)
                owners.append(i)
        return _Batch(rows, ids, texts, tokens, owners)

    def _embed(self, batch: _Batch, source: Source, bad: _BadRows) -> tuple[_Batch, np.ndarray]:
        """The batch's vectors; a text the model refuses as too long is its row's problem
        (named by file and row, or that row alone left out), not the batch's."""
        while True:
            try:
                return batch, self.model.embed(batch.texts, instruction=self.config.instruction,
                                               dimensions=self.config.dimensions,
                                               truncate=self.config.truncate)
            except InputTooLongError as e:
                owner = batch.owners[e.index]
                row = batch.rows[owner]
                what = (f"the text of id {row.id!r}" if self.chunker is None
                        else f"chunk {batch.ids[e.index]!r}")
                bad(source, row, e.describe(what, audience="cli"))
                batch = batch.without(owner)

    def write(self, name: str, source: Source, rows: Iterable[Row], report: JobReport,
              bad: _BadRows) -> None:
        pa = self.pa
        final = self._path(name)
        tmp = final.with_name(f".{final.name}.tmp")
        with self.pq.ParquetWriter(tmp, self.schema) as out:
            for group in _batches(rows, self.config.batch_size):
                batch, vectors = self._embed(self._batch(group, source, report, bad), source, bad)
                ids, tokens = batch.ids, batch.tokens
                out.write_table(pa.table({
                    "id": pa.array(ids, pa.string()),
                    "vector": pa.FixedSizeListArray.from_arrays(
                        pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32()),
                        self.dims),
                    "dimensions": pa.array([self.dims] * len(ids), pa.int32()),
                    "model": pa.array([self.model_fp] * len(ids), pa.string()),
                    "tokens": pa.array(tokens if tokens is not None else [None] * len(ids),
                                       pa.int32()),
                }, schema=self.schema))
                report.texts += len(ids)
                report.tokens = (report.tokens + sum(tokens)
                                 if tokens is not None and report.tokens is not None else None)
        os.replace(tmp, final)  # the shard appears whole or not at all


def _tokens(model: BaseEmbedder, texts: list[str], instruction: str | None) -> list[int] | None:
    """Tokens each text costs as embedded: EOS included, and the query template with an
    instruction (what a chunk's count is too)."""
    try:
        return model.count_tokens(model.format_texts(texts, instruction))
    except NotImplementedError:  # a backend without a tokenizer
        return None


class _StoreWriter(_Writer):
    """Shards ingested into an index (chunks upserted by id); the shard's name is recorded in
    the store's metadata once its chunks are stored."""

    def __init__(self, model: BaseEmbedder, config: JobConfig, fp: str) -> None:
        from smysl.toolkit.index import Index, IndexConfig
        from smysl.toolkit.store import StoreConfig

        self.model, self.config, self.fp = model, config, fp
        store = StoreConfig.parse(config.output, table=config.table)
        self.index = Index.create_or_open(model, IndexConfig(store=store,
                                                             dimensions=config.dimensions))

    def _committed(self) -> dict[str, list[str]]:
        jobs = self.index.store.read_meta().get(STORE_SHARDS)
        return dict(jobs) if isinstance(jobs, dict) else {}

    def done(self, name: str) -> bool:
        return name in self._committed().get(self.fp, [])

    def write(self, name: str, source: Source, rows: Iterable[Row], report: JobReport,
              bad: _BadRows) -> None:
        from smysl.toolkit.ingest import Document, IngestConfig

        counted: list[int] = []
        row_ids: list[str] = []
        chunked: set[str] = set()  # ids of the rows that gave chunks

        def documents() -> Iterator[Document]:
            for batch in _batches(rows, self.config.batch_size):
                tokens = _tokens(self.model, [r.text for r in batch], None)
                counted.append(sum(tokens) if tokens is not None else -1)
                row_ids.extend(r.id for r in batch)
                yield from (Document(r.id, r.text) for r in batch)

        done = self.index.add(
            documents(), IngestConfig(chunk=self.config.chunking or ChunkConfig(),
                                      batch_size=self.config.batch_size,
                                      dimensions=self.config.dimensions, optimize=False),
            on_stored=lambda ids: chunked.update(i.rpartition("#")[0] for i in ids))
        report.texts += done.chunks
        report.empty_rows += sum(1 for i in row_ids if i not in chunked)
        report.tokens = (report.tokens + sum(counted)
                         if report.tokens is not None and all(c >= 0 for c in counted) else None)
        store = self.index.store
        meta = store.read_meta()
        jobs = self._committed()
        jobs[self.fp] = [*jobs.get(self.fp, []), name]
        store.write_meta({**meta, STORE_SHARDS: jobs})

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.index.store.optimize()
        finally:
            self.index.close()
