"""Shared options of the toolkit commands (index, classify, cluster, dedup)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

_WHERE = re.compile(r"^(?P<key>[^<>=!]+?)(?P<op>>=|<=|=|>|<)(?P<value>.*)$")
_RANGE = {">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", "-i", required=True, help="input .csv or .jsonl (- = JSONL stdin)")
    p.add_argument("--text-field", default="text", help="column with the text (default: text)")
    p.add_argument("--output", "-o", default="-", help="output .csv or .jsonl (- = stdout JSONL)")
    p.add_argument("--dimensions", type=int, help="Matryoshka output size")
    p.add_argument("--instruction", help="embedding instruction or preset ('' for none); "
                                         "default: the task preset on instruction-aware models")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_where(items: list[str] | None) -> dict[str, Any] | None:
    """``["lang=en", "chunk>=2", "tag=[\\"a\\",\\"b\\"]"]`` -> a store filter."""
    if not items:
        return None
    where: dict[str, Any] = {}
    for item in items:
        m = _WHERE.match(item)
        if not m:
            raise ValueError(f"bad filter {item!r}: use key=value, key>=number, ...")
        key, op, value = m["key"].strip(), m["op"], parse_value(m["value"])
        if op == "=":
            where[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"filter {item!r}: {op} needs a number")
            bounds = where.setdefault(key, {})
            if not isinstance(bounds, dict):
                raise ValueError(f"filter {item!r}: {key} already has an equality condition")
            bounds[_RANGE[op]] = value
    return where
