"""Corpus input for embedding jobs: JSONL, CSV and Parquet files (or folders of them), read as a
stream of numbered records.

Each record keeps its 1-based number in its file (JSONL: the line; CSV: the data row; Parquet:
the row), so a job can name the place of a broken row and cut a file into shards of fixed record
ranges that do not move when rows are skipped. A file is known by its name as given
(:attr:`Source.name`) and by its bytes (:func:`content_id`).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smysl.files import allow_long_csv_fields
from smysl.rows import CsvLines, missing, row_id, separator_hint
from smysl.tokenize import check_unicode

#: The manifest a job writes in its output folder (``smysl.scale.job.MANIFEST``).
JOB_MANIFEST = "_smysl_job.json"
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
#: Data files that are neither corpus input nor lines of text: named, never read as either.
OTHER_DATA = {".json": "JSON Lines go in a .jsonl file (one object a line): rename it if it is "
                       "that",
              ".tsv": "convert it to .csv", ".gz": "decompress it", ".bz2": "decompress it",
              ".xz": "decompress it", ".zst": "decompress it", ".zip": "unpack it",
              ".arrow": "convert it to .parquet", ".feather": "convert it to .parquet",
              ".xlsx": "export it as .csv", ".xls": "export it as .csv",
              ".npy": "it holds vectors (what smysl embed writes), not texts"}
#: Records read from Parquet per batch (bounded memory whatever the file size).
PARQUET_BATCH = 4096


@dataclass(frozen=True)
class Source:
    """One input file, and its name as given: its path from the folder given, that folder's own
    name first (``corpus/sub/a.jsonl``); a file given itself, its folder's name and its own
    (``corpus/a.jsonl``). The name is stable across machines and working directories."""

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


def _named(base: Path, rel: str) -> str:
    """``rel`` after the name of folder ``base`` (made absolute, symlinks kept: the name given)."""
    root = Path(os.path.abspath(base)).name
    return f"{root}/{rel}" if root else rel


def find_sources(inputs: Sequence[str | Path], unread: list[Path] | None = None
                 ) -> list[Source]:
    """The input files: each file given, and every JSONL/CSV/Parquet file under each folder
    (sorted, so shard order is stable; hidden files and folders left out); a clear error when
    there are none. The other files of a folder are appended to ``unread`` (except names
    starting with ``_``: markers such as Spark's ``_SUCCESS``). A job's output folder (it
    holds ``_smysl_job.json``) inside an input folder is left out: its shards are no corpus,
    and ``-o corpus/vectors`` broke every run after the first."""
    if isinstance(inputs, str | Path):  # a string's characters would each be a path ("/")
        raise TypeError(f"inputs must be a list of files or folders, not one path: "
                        f"[{str(inputs)!r}]")
    out: list[Source] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(p.rglob("*"))  # one walk of the tree
            outputs = {f.parent for f in found if f.name == JOB_MANIFEST}
            for f in found:
                rel = f.relative_to(p)
                if not f.is_file() or any(part.startswith(".") for part in rel.parts):
                    continue
                if any(d in outputs for d in f.parents):
                    continue
                if any(part.startswith("_") for part in rel.parts[:-1]):
                    # a writer's own folder (Spark's _temporary: a failed attempt's partial
                    # files, read as rows of the corpus), left out as Parquet readers leave it
                    if unread is not None and f.suffix.lower() in SUFFIXES:
                        unread.append(f)
                    continue
                if f.suffix.lower() in SUFFIXES:
                    out.append(Source(f, _named(p, rel.as_posix())))
                elif unread is not None and not f.name.startswith("_"):
                    unread.append(f)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise ValueError(f"{p}: expected a .jsonl, .csv or .parquet file, or a folder")
            out.append(Source(p, _named(p.parent, p.name)))
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


def other_data(path: str | Path) -> str | None:
    """Why ``path`` is read neither as a corpus nor as lines of text (a ``.json``, ``.tsv`` or
    compressed file: its lines are not inputs), else None."""
    p = Path(path)
    hint = OTHER_DATA.get(p.suffix.lower())
    if hint is None:
        return None
    return (f"{p}: a {p.suffix} file is not read: a corpus is a .jsonl, .csv or .parquet file "
            f"(or a folder of them), lines of text a plain text file; {hint}")


#: A file's size, time of last change (ns) and inode: what it was when it was hashed.
Stamp = tuple[int, int, int]


def file_stamp(source: Source) -> Stamp:
    """The file's size, time of last change (ns) and inode (a same-size file renamed over it),
    taken before it is hashed (:func:`content_id`) and compared as each of its shards is
    committed (:func:`check_unchanged`)."""
    st = os.stat(source.path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def check_unchanged(source: Source, stamp: Stamp) -> None:
    """ValueError if ``source`` changed since ``stamp`` was taken: rows appended while a job
    read the file went into shards named by the bytes hashed before (a rerun of the same
    file was then refused as "changed", and a copy of the original counted as done)."""
    try:
        now: Stamp | None = file_stamp(source)
    except FileNotFoundError:
        now = None
    if now != stamp:
        raise ValueError(f"{source.path} changed while this job read it (its size, time of "
                         "change or inode is not what it was when it was hashed, or it is "
                         "gone): the shard being written is not committed. Run the job again "
                         "once the file no longer changes")


def content_id(source: Source) -> tuple[str, Stamp]:
    """12 hex digits of the SHA-256 of the file's bytes: what its shards hold depends on them
    alone (an edited or appended file gets new shards; a moved or copied one keeps its own);
    and the file's :func:`file_stamp`, taken before the bytes are read."""
    stamp = file_stamp(source)
    h = hashlib.sha256()
    with open(source.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12], stamp


def count_records(source: Source) -> int:
    """Records in a file, cheaply, for progress totals: Parquet's metadata; the non-blank
    lines of JSONL (the reader skips blank ones; a last line needs no newline); CSV's
    non-blank lines but the header, or its records as the csv module reads them where a
    quote could hold a line break (counting lines made a file of 10-line records look ten
    times as long)."""
    if source.format == "parquet":
        return int(_pyarrow_parquet().ParquetFile(source.path).metadata.num_rows)
    n, quoted = 0, False
    with open(source.path, "rb") as f:
        for line in f:
            n += bool(line.strip())
            quoted = quoted or b'"' in line
    if source.format != "csv":
        return n
    if quoted:
        with open(source.path, encoding="utf-8", errors="replace", newline="") as t:
            n = sum(1 for row in csv.reader(t) if row)
    return max(0, n - 1)


def to_row(number: int, record: Any, id_field: str, text_field: str) -> Row:
    """The one rule for a usable record: an id (a non-empty string or a number) and a text (a
    string, empty allowed); otherwise a :class:`Row` carrying its problem."""
    if not isinstance(record, dict):
        return Row(number, problem="not an object")
    if None in record:  # csv.DictReader's key for values past the header's columns
        return Row(number, problem="more fields than the header has (an unquoted comma in a "
                   "field?)")
    text = record.get(text_field)
    try:
        rid = row_id(record.get(id_field), id_field)
    except ValueError as e:
        fields = f" (its fields: {_fields(record)})" if id_field not in record else ""
        return Row(number, problem=f"{e}{fields}")
    if isinstance(text, bytes):  # a Parquet binary column (older Spark/Hive write strings so)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return Row(number, problem=f"text field {text_field!r} is bytes that are not "
                                       "UTF-8")
    if not isinstance(text, str):
        if text_field not in record:  # its fields said: a misspelt --text-field is seen there
            # (a JSONL row's advice, --skip-bad-rows, then skipped every row: a review's)
            return Row(number, problem=f"no text field {text_field!r} (its fields: "
                       f"{_fields(record)})")
        return Row(number, problem=f"no text field {text_field!r}" if missing(text)
                   else f"text field {text_field!r} is not a string")
    # JSON may spell a lone surrogate ("\ud800"): not text, and no UTF-8 output can hold it
    for field, value in ((id_field, rid), (text_field, text)):
        try:
            check_unicode(value, f"field {field!r}")
        except ValueError as e:
            return Row(number, problem=str(e))
    return Row(number, rid, text)


def _fields(record: dict[Any, Any]) -> str:
    """A record's field names as an error shows them (the first ten)."""
    names = [str(k) for k in record]
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def read_rows(source: Source, id_field: str, text_field: str) -> Iterator[Row]:
    """Every record of ``source`` as a :class:`Row`; broken records carry their problem (the
    caller decides to stop or skip). A file-level problem (no such column, a byte that is not
    UTF-8, a CSV the csv module cannot parse) raises ValueError naming the file and line."""
    fmt = source.format
    if fmt == "parquet":
        yield from _parquet(source, id_field, text_field)
        return
    # utf-8-sig: a leading BOM (Excel, Notepad) is not part of the first column or line. A
    # JSON line ends at \n only (a lone \r is JSON whitespace; line numbers count as wc and
    # sed do); the csv module wants newline="" and finds the ends of its rows itself
    newline = "" if fmt == "csv" else "\n"
    with open(source.path, encoding="utf-8-sig", errors="strict", newline=newline) as f:
        try:
            if fmt == "csv":
                yield from _csv(source, f, id_field, text_field)
                return
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    # without its line end: a line cut short (a writer killed mid-line) was
                    # "Expecting ',' at column 1", the error placed on the line after it
                    record = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    # e.msg alone ends "... at" where the place follows
                    at = "" if e.msg.endswith(" at") else " at"
                    yield Row(n, problem=f"invalid JSON ({e.msg}{at} column {e.colno})")
                    continue
                yield to_row(n, record, id_field, text_field)
        except UnicodeDecodeError as e:  # the codec's message names no file and no place
            number, offset, byte = _bad_byte(source.path)
            raise ValueError(f"{source.path}, line {number} (byte {offset} of the file, "
                             f"0x{byte:02x}): not valid UTF-8 ({e.reason}); convert the file "
                             "to UTF-8") from None


def _bad_byte(path: Path) -> tuple[int, int, int]:
    """(line, offset in the file, value) of the first byte of ``path`` that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:  # e.object: the decoder's pending bytes + block
                at = offset - (len(e.object) - len(block)) + e.start
                line = lines + block[:max(0, at - offset)].count(b"\n") + 1
                return line, at, e.object[e.start]
            offset += len(block)
            lines += block.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:  # a sequence cut off at the end of the file
        return lines + 1, offset - len(e.object) + e.start, e.object[e.start]
    return lines + 1, offset, 0


def _csv(source: Source, lines: Iterable[str], id_field: str, text_field: str
         ) -> Iterator[Row]:
    allow_long_csv_fields()
    kept = CsvLines(lines)
    reader = csv.DictReader(kept)
    try:
        if reader.fieldnames is None:  # an empty file: no rows, as an empty JSONL file has
            return
        columns = reader.fieldnames
        kept.record()  # the header's lines are no record's
        missing = [c for c in (id_field, text_field) if c not in columns]
        if missing:
            raise ValueError(f"{source.path}: no column {missing[0]!r} "
                             f"(columns: {', '.join(columns)}){separator_hint(columns)}")
        for n, record in enumerate(reader, 1):
            kept.record()
            yield to_row(n, record, id_field, text_field)
        kept.check_end(str(source.path))
    except csv.Error as e:
        # the csv reader's count: DictReader's own is updated only after a good record
        raise ValueError(f"{source.path}, line {reader.reader.line_num}: not readable as CSV "
                         f"({e})") from None


def _pyarrow_parquet() -> Any:
    """``pyarrow.parquet``, or an ImportError naming the extra that provides it (counting a
    file's records for the progress bar reached a bare ``import`` first)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("Parquet input needs pyarrow: pip install 'smysl[toolkit]'") from e
    return pq


def _parquet(source: Source, id_field: str, text_field: str) -> Iterator[Row]:
    pq = _pyarrow_parquet()
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
            yield to_row(n, record, id_field, text_field)
