"""Corpus input for embedding jobs: JSONL, CSV and Parquet files (or folders of them), read as a
stream of numbered records.

Each record keeps its 1-based number in its file (JSONL: the line; CSV: the data row; Parquet:
the row), so a job can name the place of a broken row and cut a file into shards of fixed record
ranges that do not move when rows are skipped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
#: Records read from Parquet per batch (bounded memory whatever the file size).
PARQUET_BATCH = 4096


@dataclass(frozen=True)
class Source:
    """One input file and its name relative to the input (stable across machines)."""

    path: Path
    name: str

    @property
    def format(self) -> str:
        return SUFFIXES[self.path.suffix.lower()]


@dataclass(frozen=True)
class Row:
    """Record ``number`` of a file: its id and text, or ``problem`` when it is broken."""

    number: int
    id: str = ""
    text: str = ""
    problem: str | None = None


def find_sources(inputs: Sequence[str | Path]) -> list[Source]:
    """The input files: each file given, and every JSONL/CSV/Parquet file under each folder
    (sorted, so shard order is stable); a clear error when there are none."""
    out: list[Source] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.suffix.lower() in SUFFIXES and not f.name.startswith("."))
            out += [Source(f, f.relative_to(p).as_posix()) for f in files]
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise ValueError(f"{p}: expected a .jsonl, .csv or .parquet file, or a folder")
            out.append(Source(p, p.name))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise ValueError(f"no .jsonl, .csv or .parquet files in {', '.join(map(str, inputs))}")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two inputs have the same name {dup[0]!r}: shard names would clash")
    return out


def is_input(path: str | Path) -> bool:
    """Whether ``path`` is corpus input (a folder, or a JSONL/CSV/Parquet file)."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in SUFFIXES


def count_records(source: Source) -> int:
    """Records in a file, cheaply (Parquet metadata; lines otherwise), for progress totals."""
    if source.format == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(source.path).metadata.num_rows)
    n = 0
    with open(source.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return max(0, n - 1) if source.format == "csv" else n


def _row(number: int, record: Any, id_field: str, text_field: str) -> Row:
    if not isinstance(record, dict):
        return Row(number, problem="not an object")
    rid, text = record.get(id_field), record.get(text_field)
    if rid is None or rid == "" or isinstance(rid, dict | list | bool):
        return Row(number, problem=f"no usable id field {id_field!r}" if rid is None or rid == ""
                   else f"id field {id_field!r} is not a string or number")
    if not isinstance(text, str):
        return Row(number, problem=f"no text field {text_field!r}" if text is None
                   else f"text field {text_field!r} is not a string")
    return Row(number, str(rid), text)


def read_rows(source: Source, id_field: str, text_field: str) -> Iterator[Row]:
    """Every record of ``source`` as a :class:`Row`; broken records carry their problem (the
    caller decides to stop or skip). A file-level problem (no such column) raises ValueError."""
    fmt = source.format
    if fmt == "parquet":
        yield from _parquet(source, id_field, text_field)
        return
    with open(source.path, encoding="utf-8", errors="strict", newline="") as f:
        try:
            if fmt == "csv":
                reader = csv.DictReader(f)
                columns = reader.fieldnames or []
                missing = [c for c in (id_field, text_field) if c not in columns]
                if missing:
                    raise ValueError(f"{source.path}: no column {missing[0]!r} "
                                     f"(columns: {', '.join(columns)})")
                for n, record in enumerate(reader, 1):
                    yield _row(n, record, id_field, text_field)
                return
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield Row(n, problem=f"invalid JSON ({e.msg})")
                    continue
                yield _row(n, record, id_field, text_field)
        except UnicodeDecodeError as e:
            raise ValueError(f"{source.path}: not valid UTF-8 ({e.reason}); convert it to "
                             f"UTF-8") from None


def _parquet(source: Source, id_field: str, text_field: str) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("Parquet input needs pyarrow: pip install 'smysl[toolkit]'") from e
    try:
        f = pq.ParquetFile(source.path)
    except Exception as e:  # pyarrow's errors for a file that is not Parquet vary
        raise ValueError(f"{source.path}: not a readable Parquet file ({e})") from None
    columns = f.schema_arrow.names
    missing = [c for c in (id_field, text_field) if c not in columns]
    if missing:
        raise ValueError(f"{source.path}: no column {missing[0]!r} (columns: "
                         f"{', '.join(columns)})")
    n = 0
    for batch in f.iter_batches(batch_size=PARQUET_BATCH,
                                columns=list(dict.fromkeys([id_field, text_field]))):
        for record in batch.to_pylist():
            n += 1
            yield _row(n, record, id_field, text_field)
