"""Reading and writing row tables: CSV (header row), JSONL (one object per line) and JSON (an
array of objects, as exports and ``json.dump`` write them)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from smysl.files import allow_long_csv_fields, output
from smysl.rows import CsvLines, separator_hint

#: The files :func:`iter_rows` reads.
TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")


def table_format(path: str | Path) -> str:
    """``"csv"``, ``"jsonl"`` or ``"json"`` from the suffix (``-`` means JSONL on
    stdin/stdout)."""
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "json"
    if str(path) == "-" or suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise ValueError(f"{path}: expected a .csv, .jsonl or .json file")


def check_output(path: str | Path) -> None:
    """Refuse, before any work, an output :func:`write_rows` could not write: another suffix,
    or a folder that is not there (a model's work, or a paid API's, was lost at the end)."""
    table_format(path)
    if str(path) != "-" and not Path(path).expanduser().parent.is_dir():
        raise FileNotFoundError(f"{path}: no such folder {Path(path).expanduser().parent}")


def check_file(path: str | Path, what: str) -> None:
    """Refuse, before any work, a file ``what`` (``--save``, ``--report``) that could not be
    written: in a folder that is not there, or a folder itself (a model's work was lost at
    the end, after the output, or before it). ``-`` is stdout."""
    if str(path) == "-":
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise IsADirectoryError(f"{what} {path}: a folder, not a file")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"{what} {path}: no such folder {p.parent}")


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a CSV, JSONL or JSON (an array of objects) file as dicts (CSV values are
    strings)."""
    fmt = table_format(path)
    stdin = str(path) == "-"
    # stdin's bytes, read as a file's are (its text layer decodes in the locale's encoding);
    # a JSON line ends at \n only, not at a lone \r (JSON whitespace); the csv module wants
    # newline="" and finds the ends of its rows itself
    newline = "" if fmt == "csv" else "\n"
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which became part of the
    # first column's name
    f = (io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline=newline) if stdin
         else open(path, encoding="utf-8-sig", newline=newline))  # noqa: SIM115 - closed below
    name = "stdin" if stdin else str(path)
    try:
        if fmt == "csv":
            yield from _csv(f, name)
        elif fmt == "json":
            yield from _json(f, name)
        else:
            yield from _jsonl(f, "<stdin>" if stdin else str(path))
    except UnicodeDecodeError as e:  # the codec's message names no file
        raise ValueError(f"{'stdin' if stdin else path}: not valid UTF-8 ({e.reason}); "
                         "convert it to UTF-8") from None
    finally:
        if stdin:
            f.detach()  # sys.stdin.buffer stays open
        else:
            f.close()


def _csv(f: TextIO, name: str) -> Iterator[dict[str, Any]]:
    allow_long_csv_fields()
    lines = CsvLines(f)
    reader = csv.DictReader(lines)
    try:
        # blank cells ending a spreadsheet's header name no column anyone reads
        header = [c for c in reader.fieldnames or [] if c and c.strip()]
        lines.record()  # the header's lines are no record's
        if len(set(header)) < len(header):  # DictReader kept the last column of a name
            twice = next(c for c in header if header.count(c) > 1)
            raise ValueError(f"{name}: the header names the column {twice!r} twice; a row "
                             "keeps one value per name, so rename one of them")
        for row in reader:
            lines.record()
            if None in row:  # DictReader's key for the values past the header's columns
                raise ValueError(f"{name}, line {reader.line_num}: more fields than the header "
                                 "has (an unquoted comma in a field?); quote that field")
            yield row
        lines.check_end(name)
    except csv.Error as e:  # e.g. a field past the limit; the csv module names no file
        raise ValueError(f"{name}, line {reader.line_num}: not readable as CSV ({e})") from None


def _jsonl(f: TextIO, name: str) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            # a CSV piped in was "invalid JSON" alone: stdin has no suffix to tell its format
            hint = (" (stdin is read as JSON Lines, one object per line; give a .csv or "
                    ".json table as a file)" if name == "<stdin>" else "")
            raise ValueError(f"{name}:{n}: invalid JSON: {e}{hint}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{name}:{n}: expected a JSON object per line")
        yield row


def _json(f: TextIO, name: str) -> Iterator[dict[str, Any]]:
    """A ``.json`` file's rows: an array of objects, or JSON Lines under that suffix (read
    as such, as they were before arrays were)."""
    text = f.read()
    if not text.lstrip().startswith("["):
        try:
            rows = list(_jsonl(io.StringIO(text), name))
        except ValueError as e:
            try:  # one object over several lines: no table at all
                whole = json.loads(text)
            except json.JSONDecodeError:
                raise e from None  # JSON Lines with a bad line: named by its number
            if isinstance(whole, dict):
                raise ValueError(f"{name}: one JSON object, not a table; a .json table is an "
                                 "array of objects (or one object per line)") from None
            raise
        yield from rows
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: invalid JSON: {e}") from None
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{name}: item {n} of the array is a {type(row).__name__}; a "
                             ".json table is an array of objects")
        yield row


def read_column(path: str | Path, field: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The ``field`` column as strings, and the full rows."""
    rows = list(iter_rows(path))
    name = "<stdin>" if str(path) == "-" else path
    if rows and not any(field in r for r in rows):
        raise ValueError(f"{name}: no column {field!r} (columns: {sorted(rows[0])})"
                         f"{separator_hint(list(rows[0]))}")
    texts = []
    for n, r in enumerate(rows, 1):
        if field not in r:
            raise ValueError(f"{name}: row {n} has no {field!r} column (columns: "
                             f"{sorted(r)})")
        v = r[field]
        if not isinstance(v, str):
            raise ValueError(f"{name}: row {n}: {field!r} must be a string, got {v!r}")
        texts.append(v)
    return texts, rows


def csv_header(path: str | Path) -> list[str]:
    """The column names of CSV file ``path``, which a table without rows still has; empty for
    stdin, another format or a file without a header."""
    if str(path) == "-" or table_format(path) != "csv":
        return []
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [c for c in next(csv.reader(f), []) if c.strip()]


def write_rows(path: str | Path, rows: Iterable[Mapping[str, Any]],
               columns: Sequence[str] = ()) -> None:
    """Write rows as CSV (the columns of the first row, then any new ones, then ``columns``), JSONL
    or a JSON array; a file is replaced whole when all is written
    (:func:`smysl.files.replacing`), never left half. ``columns``: what a CSV of no rows
    still names (an input's header and the columns added: it was a bare line break)."""
    rows = list(rows)
    fmt = table_format(path)
    with output(str(path), newline="") as out:
        if fmt == "jsonl":
            for r in rows:
                out.write(json.dumps(dict(r), ensure_ascii=False) + "\n")
        elif fmt == "json":  # an array, an object a line: valid JSON, and still greppable
            out.write("[" + ",\n ".join(json.dumps(dict(r), ensure_ascii=False)
                                         for r in rows) + "]\n")
        else:
            # the rows' own order (input columns, then those added) first: with ``columns``
            # first, a JSONL input's columns came after the added ones
            fields: dict[str, None] = {}
            for r in rows:
                fields.update(dict.fromkeys(r))
            fields.update(dict.fromkeys(columns))
            w = csv.DictWriter(out, fieldnames=list(fields))
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v, ensure_ascii=False)
                            if isinstance(v, list | dict) else v for k, v in r.items()})
