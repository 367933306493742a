"""Subcommands of the ``smysl`` CLI (see :mod:`smysl.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def count(text: str) -> int:
    """An argparse ``type`` for a count (>= 1): ``--batch-size 0`` is argparse's error naming
    the flag, at once, not a config field's after the model loaded."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def given(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    """``{config field: value}`` of the flags (argparse dests, ``fields``' values) that were
    given: flags whose argparse default is None, so that the config's own default holds
    where one was not (one home for each default) and a flag given where it does nothing
    can be told apart."""
    values = vars(args)
    return {field: values[dest] for field, dest in fields.items() if values[dest] is not None}


def check_output_folder(output: str) -> None:
    """``FileNotFoundError`` when ``--output``'s folder is not there, before any work (a
    model's, or a paid API's, was lost at the end); ``-`` is stdout."""
    from pathlib import Path

    parent = Path(output).expanduser().parent
    if output != "-" and not parent.is_dir():
        raise FileNotFoundError(f"--output {output}: no such folder {parent}")


def examples(lines: Sequence[tuple[str, str]]) -> str:
    """An epilog of command lines, each under what it does (a shell comment: pasted whole,
    it still runs)."""
    return EXAMPLES_HEAD + "".join(f"\n  # {what}\n  {cmd}" if what else f"\n  {cmd}"
                                   for cmd, what in lines)


EXAMPLES_HEAD = "examples:"


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as argparse does; keeps the examples' lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES_HEAD):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
