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
from smysl.scale.sources import Row, Source, count_records, find_sources, read_rows
from smysl.toolkit.chunking import ChunkConfig

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
            index always chunks (the toolkit's default sizes when None).
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
        return line + (f"; {self.usage}" if self.usage else "")


def job_fingerprint(model: BaseEmbedder, config: JobConfig) -> str:
    """What makes two jobs' outputs interchangeable (shard files are named by it)."""
    return fingerprint_of(_identity(model, config))


def _identity(model: BaseEmbedder, config: JobConfig) -> dict[str, Any]:
    chunk = config.chunk if config.chunk is not None or not config.to_store else ChunkConfig()
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
    fp = job_fingerprint(model, config)
    report = JobReport(config.output, fp)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(count_records(s) for s in sources), unit="row", desc="embedding",
                   smoothing=0.1)
    try:
        writer: _Writer = (_StoreWriter(model, config, fp) if config.to_store
                           else _ParquetWriter(model, config, fp))
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
                    writer.write(name, _checked(group, source, config, report, on_bad_row, bar),
                                 report)
                    report.shards_written += 1
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - t0
    report.usage = model.usage_report()
    return report


def _checked(rows: Iterable[Row], source: Source, config: JobConfig, report: JobReport,
             on_bad_row: BadRowCallback | None, bar: Any) -> Iterator[Row]:
    """The good rows; a broken one raises :class:`BadRowError` or, with ``skip_bad_rows``,
    is reported and left out."""
    seen: set[str] = set()  # one shard's ids: a duplicate would be written twice
    for row in rows:
        if bar is not None:
            bar.update(1)
        problem = row.problem
        if problem is None and row.id in seen:
            problem = f"duplicate id {row.id!r} (first seen earlier in this shard)"
        if problem is not None:
            where = f"{source.path}, row {row.number}: {problem}"
            if not config.skip_bad_rows:
                raise BadRowError(f"{where}; fix the row, or report and skip broken rows "
                                  f"(--skip-bad-rows / skip_bad_rows=True)")
            report.bad_rows += 1
            if len(report.bad_examples) < 20:
                report.bad_examples.append(where)
            if on_bad_row is not None:
                on_bad_row(where)
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

    def write(self, name: str, rows: Iterable[Row], report: JobReport) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _ParquetWriter(_Writer):
    """One Parquet file per shard, written to a hidden temporary name and renamed when whole."""

    def __init__(self, model: BaseEmbedder, config: JobConfig, fp: str) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("Parquet output needs pyarrow: pip install 'smysl[toolkit]'") from e
        self.pa, self.pq = pa, pq
        self.model, self.config, self.fp = model, config, fp
        self.dims = config.dimensions or model.dimensions
        self.model_fp = model.fingerprint()
        self.dir = Path(config.output).expanduser()
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"{self.dir}: the output must be a folder (a Parquet dataset)")
        self.dir.mkdir(parents=True, exist_ok=True)
        identity = {"fingerprint": fp, "model_name": model.name, **_identity(model, config)}
        manifest = self.dir / MANIFEST
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
            if old.get("fingerprint") != fp:
                differ = sorted(k for k in identity if old.get(k) != identity[k]
                                and k not in ("fingerprint", "model_name"))
                raise ValueError(f"{self.dir} holds the output of another job (it differs in: "
                                 f"{', '.join(differ) or 'fingerprint'}); write to a new folder")
        else:
            manifest.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
        for stale in self.dir.glob(".*.parquet.tmp"):  # an interrupted run's partial shard
            stale.unlink()
        self.schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), self.dims)),
                                 ("dimensions", pa.int32()), ("model", pa.string()),
                                 ("tokens", pa.int32())])
        if config.chunk is not None:
            from smysl.toolkit.chunking import chunker_for

            self.chunker: Any = chunker_for(model, config.chunk)

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.{self.fp[:16]}.parquet"

    def done(self, name: str) -> bool:
        return self._path(name).is_file()

    def _texts(self, rows: list[Row]) -> tuple[list[str], list[str], list[int] | None]:
        if self.config.chunk is None:
            texts = [r.text for r in rows]
            return [r.id for r in rows], texts, _tokens(self.model, texts)
        ids, texts, tokens = [], [], []
        for r in rows:
            for c in self.chunker.iter_split(r.text):
                ids.append(f"{r.id}#{c.index}")
                texts.append(c.text)
                tokens.append(c.tokens)
        return ids, texts, tokens

    def write(self, name: str, rows: Iterable[Row], report: JobReport) -> None:
        pa = self.pa
        final = self._path(name)
        tmp = final.with_name(f".{final.name}.tmp")
        with self.pq.ParquetWriter(tmp, self.schema) as out:
            for batch in _batches(rows, self.config.batch_size):
                ids, texts, tokens = self._texts(batch)
                vectors = self.model.embed(texts, instruction=self.config.instruction,
                                           dimensions=self.config.dimensions,
                                           truncate=self.config.truncate)
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


def _tokens(model: BaseEmbedder, texts: list[str]) -> list[int] | None:
    try:
        return model.count_tokens(texts)
    except NotImplementedError:  # a backend without a tokenizer
        return None


class _StoreWriter(_Writer):
    """Shards ingested into an index (chunks upserted by id); the shard's name is recorded in
    the store's metadata once its chunks are stored."""

    def __init__(self, model: BaseEmbedder, config: JobConfig, fp: str) -> None:
        from smysl.toolkit.index import Index, IndexConfig
        from smysl.toolkit.store import StoreConfig

        if config.instruction is not None:
            raise ValueError("an index stores documents: embed queries (an instruction) into a "
                             "Parquet folder instead")
        self.model, self.config, self.fp = model, config, fp
        store = StoreConfig.parse(config.output, table=config.table)
        self.index = Index.create_or_open(model, IndexConfig(store=store,
                                                             dimensions=config.dimensions))

    def _committed(self) -> dict[str, list[str]]:
        jobs = self.index.store.read_meta().get(STORE_SHARDS)
        return dict(jobs) if isinstance(jobs, dict) else {}

    def done(self, name: str) -> bool:
        return name in self._committed().get(self.fp, [])

    def write(self, name: str, rows: Iterable[Row], report: JobReport) -> None:
        from smysl.toolkit.ingest import Document, IngestConfig

        counted: list[int] = []

        def documents() -> Iterator[Document]:
            for batch in _batches(rows, self.config.batch_size):
                tokens = _tokens(self.model, [r.text for r in batch])
                counted.append(sum(tokens) if tokens is not None else -1)
                yield from (Document(r.id, r.text) for r in batch)

        done = self.index.add(documents(), IngestConfig(
            chunk=self.config.chunk or ChunkConfig(), batch_size=self.config.batch_size,
            dimensions=self.config.dimensions, optimize=False))
        report.texts += done.chunks
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
