"""The rules for reading a row of a table, wherever it is read (the corpus job's
:mod:`smysl.scale.sources`, the toolkit's :mod:`smysl.toolkit.io`): what a usable id is, a CSV
record whose quote never closes, a CSV of other separators."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np


def missing(value: Any) -> bool:
    """A null: None, the NaN a float column (pandas, Ray Data) holds for one, or pandas' NA
    (a ``string``/nullable column's; its ``== ""`` is NA, whose truth raises)."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or type(value).__name__ == "NAType")


def row_id(value: Any, field: str) -> str:
    """The one rule for a row's id: a non-empty string or a number, as text; a whole float is
    the integer (a pandas integer column with a null is float64: ``1.0`` is id ``1``, as a
    CSV of the rows has it), and UTF-8 bytes (a Parquet binary column) their text.
    ``ValueError`` saying what is wrong otherwise."""
    if isinstance(value, np.generic):  # Ray Data's numpy scalars: np.bool_ is no id either
        value = value.item()
    if missing(value) or value == "":
        raise ValueError(f"no usable id field {field!r}")
    if isinstance(value, dict | list | bool):
        raise ValueError(f"id field {field!r} is not a string or number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"id field {field!r} is {value!r}, not an id")
        if value.is_integer():
            value = int(value)
    if isinstance(value, bytes):  # older Spark/Hive write strings so
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"id field {field!r} is bytes that are not UTF-8") from None
        if not value:
            raise ValueError(f"no usable id field {field!r}")
    return str(value)


class CsvLines:
    """The lines a ``csv`` reader is given, those of its last record kept: the csv module
    reads the rest of a file into a field whose quote never closes (its rows gone without a
    word, where pandas refuses the file), and that record's own lines tell it
    (:meth:`check_end`). Call :meth:`record` after the header and after each record."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = lines
        #: Lines given to the reader so far; those before the record being read.
        self.read = self._before = self._first = 0
        self._current: list[str] = []
        self._last: list[str] = []

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self._current.append(line)
            self.read += 1
            yield line

    def record(self) -> None:
        self._last, self._current = self._current, []
        self._first, self._before = self._before, self.read

    def check_end(self, name: str) -> None:
        """``ValueError`` naming ``name`` and the line where the last record's quote opened
        when the file ends before it closes."""
        blank = next((i for i, line in enumerate(self._last) if line.strip()), 0)
        lines = self._last[blank:]  # the reader skips blank lines before a record
        try:
            for _ in csv.reader(lines, strict=True):
                pass
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                raise ValueError(
                    f"{name}, line {self._first + blank + 1}: a quoted field opens in this "
                    f"record and the file ends before it closes: its {len(lines)} line(s) "
                    "would be one text (any rows after it lost); close the quote, or double "
                    'a quote inside a quoted field ("")') from None


def separator_hint(columns: Sequence[str]) -> str:
    """Why a CSV's header is one column holding the names: its fields are separated by ``;``,
    a tab or ``|`` (a spreadsheet's export in some locales), not by ``,``; else ""."""
    other = next((d for d in (";", "\t", "|") if len(columns) == 1 and d in columns[0]), None)
    return f"; its fields are separated by {other!r}, and a CSV's are by ','" if other else ""
