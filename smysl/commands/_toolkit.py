"""Shared options of the toolkit commands (index, classify, cluster, dedup)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from smysl.tokenize import InputTooLongError

if TYPE_CHECKING:
    from smysl.rerank import BaseReranker

_WHERE = re.compile(r"^(?P<key>[^<>=!]+?)(?P<op>>=|<=|=|>|<)(?P<value>.*)$")
_RANGE = {">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}


#: The flags of the toolkit commands whose files are written.
WRITTEN = frozenset({"-o", "--summary", "--report", "--save"})


def check_apart(files: Mapping[str, str | None]) -> None:
    """Refuse, before any work, a file that a flag writes and another names (``-o`` and
    ``--summary``: the one written last replaced the other, silently; ``--save`` and ``-i``:
    the input went). Files only read may be one (``-i`` and ``--train``), and so may ``-i``
    and ``-o``: the rows are read whole before they are written back. ``-`` is stdin for a
    flag that reads, which can be read once, and stdout for one that writes (not ``--save``'s
    binary file), which one flag may fill (it was a file named ``-``)."""
    seen: dict[str, str] = {}
    # --load reads a file, even one named -
    stdin = [flag for flag, path in files.items()
             if path == "-" and flag not in WRITTEN and flag != "--load"]
    if len(stdin) > 1:
        raise ValueError(f"{' and '.join(stdin)} both name - (stdin), which can be read once: "
                         "give all but one a file")
    stdout = [flag for flag, path in files.items() if path == "-" and flag in WRITTEN]
    if "--save" in stdout:
        raise ValueError("--save -: a classifier is saved as a binary .npz file, not to "
                         "stdout; give a file name")
    if len(stdout) > 1:
        raise ValueError(f"{' and '.join(stdout)} both name - (stdout): give all but one a "
                         "file (-o is stdout unless given)")
    for flag, path in files.items():
        if path is None or path == "-" or not path.strip():
            continue
        key = _file_key(path)
        first = seen.setdefault(key, flag)
        if first != flag and {first, flag} & WRITTEN and {first, flag} != {"-i", "-o"}:
            raise ValueError(f"{first} and {flag} name one file, {path}: give each its own")
        if flag in WRITTEN:
            seen[key] = flag  # the next flag naming it collides with what is written


def _file_key(path: str) -> str:
    """One key for the names of one file: an existing file's device and inode (hard links,
    a case-insensitive file system), else its resolved path, in the system's case rule."""
    full = os.path.realpath(os.path.expanduser(path))
    try:
        st = os.stat(full)
    except OSError:
        return os.path.normcase(full)
    # no inode (Windows, where stat was denied: 0): the path
    return f"{st.st_dev}:{st.st_ino}" if st.st_ino else os.path.normcase(full)


@contextlib.contextmanager
def flags_for(fields: Mapping[str, str]) -> Iterator[None]:
    """A config's ValueError in the command line's words: each field named by its flag
    (``k_max must be >= ...`` said ``--k-max 1`` in words no flag has)."""
    try:
        yield
    except ValueError as e:
        text = str(e)
        for field, flag in fields.items():  # k_max, not the k of k-means
            text = re.sub(rf"(?<![\w-]){re.escape(field)}(?![\w-])", flag, text)
        if text == str(e):
            raise
        raise ValueError(text) from None


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", "-i", required=True,
                   help="input .csv, .jsonl or .json (an array of objects; - = JSONL stdin)")
    p.add_argument("--text-field", default="text", help="column with the text (default: text)")
    p.add_argument("--output", "-o", default="-",
                   help="output .csv, .jsonl or .json (- = stdout JSONL)")
    p.add_argument("--dimensions", type=int, help="Matryoshka output size")
    p.add_argument("--instruction", help="embedding instruction or preset ('' for none); "
                                         "default: the task preset on instruction-aware models")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_rerank_arguments(p: argparse.ArgumentParser) -> None:
    """``--rerank R``, ``--rerank-top N``, ``--rerank-instruction TEXT``."""
    g = p.add_argument_group("reranking (the vector search's top candidates, reordered)")
    g.add_argument("--rerank", metavar="R", default=None,
                   help="reranker model string: a Qwen3-Reranker dir or Hub id "
                        "(Qwen/Qwen3-Reranker-0.6B), or siliconflow:..., tei:URL, smysl:URL, ...; "
                        "a local one runs with the --device/--dtype/--threads given")
    g.add_argument("--rerank-top", type=int, default=None, metavar="N",
                   help="candidates the reranker scores per query (default 50; at least -k)")
    g.add_argument("--rerank-instruction", default=None, metavar="TEXT",
                   help="the reranker's instruction (default: the model's own)")


def rerank_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``SearchConfig`` fields of the rerank flags; those flags without ``--rerank``, or with
    ``--mmr``, are an error (an option never silently does nothing)."""
    if not args.rerank:
        given = [f for f, v in (("--rerank-top", args.rerank_top),
                                ("--rerank-instruction", args.rerank_instruction))
                 if v is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} "
                             f"{'needs' if len(given) == 1 else 'need'} --rerank R")
        return {}
    if args.mmr:
        raise ValueError("--mmr and --rerank both choose the final hits out of the "
                         "candidates, by different scores: use one of them")
    out: dict[str, Any] = {"rerank_instruction": args.rerank_instruction}
    if args.rerank_top is not None:
        out["rerank_top"] = args.rerank_top
    return out


def load_rerank_model(model: str, args: argparse.Namespace) -> BaseReranker:
    """Load the ``--rerank`` model (:func:`smysl.load_reranker`) with the embedder's placement
    flags that its scheme uses (:func:`smysl.registry.reranker_options`)."""
    from smysl.commands._model import model_options
    from smysl.registry import load_reranker, reranker_options

    return load_reranker(model, reranker_options(model, model_options(args)))


def read_input(path: str, field: str, flag: str = "-i"
               ) -> tuple[list[str], list[dict[str, Any]]]:
    """:func:`smysl.toolkit.io.read_column` of the file a flag names; one that cannot be opened
    is named by the flag (it was a bare "[Errno 2] No such file or directory")."""
    from smysl.toolkit.io import read_column

    try:
        return read_column(path, field)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise ValueError(f"{flag} {path}: {e.strerror or e}") from None


def column(rows: Iterable[Mapping[str, Any]], field: str, source: str, option: str
           ) -> list[Any]:
    """``row[field]`` of every row of the table ``source`` (a file, ``-`` for stdin); a row
    without the field is a ValueError naming the file, the row and the ``option`` that chooses
    the column (a bare KeyError would name only the field)."""
    values = []
    for n, row in enumerate(rows, 1):
        if field not in row:
            name = source_name(source)
            raise ValueError(f"{name}: row {n} has no {field!r} column (columns: "
                             f"{sorted(row)}); choose one with {option}")
        values.append(row[field])
    return values


@contextlib.contextmanager
def rows_of(source: str, positions: list[int] | None = None) -> Iterator[None]:
    """An over-long text of the table ``source`` named by its file and row (1-based, as
    :func:`column` counts them), not as "input N" of whichever call embedded it (a
    classifier's training texts, its inputs, or its label descriptions). ``positions``: the
    row of each text embedded, where some rows were left out (:func:`with_text`)."""
    try:
        yield
    except InputTooLongError as e:
        name = source_name(source)
        row = (positions[e.index] if positions is not None else e.index) + 1
        raise ValueError(e.describe(f"{name}, row {row}: the text", audience="cli")
                         ) from None


def source_name(source: str) -> str:
    """A table's name in messages: ``-`` is ``<stdin>``."""
    return "<stdin>" if source == "-" else source


def blank_rows(texts: list[str]) -> list[int]:
    """The rows (1-based) whose text is empty or whitespace alone: it embeds as the
    end-of-text token (after the spaces' tokens, if any), a vector that means nothing."""
    return [n for n, t in enumerate(texts, 1) if not t.strip()]


def shown_rows(rows: list[int]) -> str:
    """Row numbers for a message: the first ten, then "..."."""
    return ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")


def with_text(texts: list[str], source: str, command: str, what: str) -> list[int]:
    """The positions of the texts that are not blank (:func:`blank_rows`). A blank one was given
    a label with a confident score, a cluster of its own, or dropped as a near-duplicate of
    another blank row or of a short one ("." scored 0.81 with ""); such rows are named on
    stderr and left without ``what`` ("their prediction is null")."""
    blank = blank_rows(texts)
    if blank:
        print(f"smysl {command}: warning: {len(blank)} row(s) of {source_name(source)} have "
              f"no text (row {shown_rows(blank)}); {what}", file=sys.stderr)
    left_out = set(blank)
    return [i for i in range(len(texts)) if i + 1 not in left_out]


def labels_in(rows: Iterable[Mapping[str, Any]], field: str, source: str, option: str
              ) -> list[str]:
    """The labels of column ``field`` (:func:`column`), each a string or a number: a null,
    empty or nested one is a ValueError naming its row (``null`` trained and predicted a
    class "None", and counted as correct)."""
    out = []
    for n, value in enumerate(column(rows, field, source, option), 1):
        if isinstance(value, bool) or not isinstance(value, str | int | float) or (
                isinstance(value, str) and not value.strip()):
            name = source_name(source)
            raise ValueError(f"{name}: row {n}: the label ({field!r}) must be a non-empty "
                             f"string or a number, got {value!r}")
        out.append(str(value))
    return out


def refuse_overwrite(rows: Iterable[Mapping[str, Any]], added: list[str], source: str
                     ) -> None:
    """ValueError if a row of ``source`` has a column the output adds: outputs keep every
    input column, and a user's ``score`` or ``group`` replaced by ours is data lost."""
    rows = list(rows)
    taken = [c for c in added if any(c in r for r in rows)]
    if taken:
        raise ValueError(f"{source} has a column {taken[0]!r}, which the output adds "
                         f"({', '.join(added)}); rename that column")


def progress(args: argparse.Namespace) -> bool:
    """A progress bar, unless ``--no-progress`` (:func:`add_table_arguments`) or stderr is
    not a terminal."""
    return not args.no_progress and sys.stderr.isatty()


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_where(items: list[str] | None) -> dict[str, Any] | None:
    """``["lang=en", "chunk>=2", "tag=[\"a\",\"b\"]"]`` -> a store filter. ``key=number``
    matches the number or its spelling as text: CSV columns are stored as text, and
    ``year=2020`` found no row of one. A key given twice is refused (a second ``=`` replaced
    the first, a later ``=`` dropped a range)."""
    if not items:
        return None
    where: dict[str, Any] = {}
    for item in items:
        m = _WHERE.match(item)
        if not m:
            raise ValueError(f"bad filter {item!r}: use key=value, key>=number, ...")
        key, op, spelled = m["key"].strip(), m["op"], m["value"].strip()
        value = parse_value(spelled)
        if op == "=":
            if key in where:
                raise ValueError(f"filter {item!r}: {key} has a condition already; for any of "
                                 f"several values write {key}='[\"a\", \"b\"]'")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            where[key] = [value, spelled] if number else value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"filter {item!r}: {op} needs a number")
            bounds = where.setdefault(key, {})
            if not isinstance(bounds, dict):
                raise ValueError(f"filter {item!r}: {key} already has an equality condition")
            if _RANGE[op] in bounds:
                raise ValueError(f"filter {item!r}: {key} has a {op} bound already")
            bounds[_RANGE[op]] = value
    return where
