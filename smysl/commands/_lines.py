"""Reading text one item per line (``smysl embed``, ``smysl rerank``, ``--queries-file``): the one
rule of where a line ends, shared so that row ``i`` of every output is line ``i + 1`` of its
input."""

from __future__ import annotations

import json
import os
import sys


def split_lines(text: str) -> list[str]:
    """``text`` split at ``\\n`` only, each line without one trailing ``\\r`` (CRLF files); a
    final ``\\n`` ends the last line instead of starting an empty one.

    Not ``str.splitlines``: it also splits at U+2028, U+2029, ``\\x0b``, ``\\x0c``,
    ``\\x1c``-``\\x1e`` and ``\\x85``, which may sit inside a line (and inside a JSON string,
    which ``ensure_ascii=False`` writers leave unescaped), so one line would become several.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(source: str, flag: str = "--input") -> list[str]:
    """The lines (:func:`split_lines`) of a UTF-8 file, or of stdin for ``-``; a byte-order
    mark at the start is not text (Windows editors write one; it was embedded as part of the
    first line, whose vector then differed from the same line's without it). ``flag``: the
    option that named ``source``, for the error when it is not there."""
    if source == "-":
        if sys.stdin.isatty():  # a command waiting on the terminal looked hung
            print(f"smysl: reading texts from the terminal, one a line; end with "
                  f"{'Ctrl-Z, Enter' if os.name == 'nt' else 'Ctrl-D'} (or give a file: "
                  f"{flag} FILE)", file=sys.stderr)
        # the bytes, as a file's are read: sys.stdin's text layer would end a line at a lone
        # \r too (universal newlines), and decode in the locale's encoding
        data = sys.stdin.buffer.read()
        try:
            return split_lines(data.decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise ValueError(f"stdin: not valid UTF-8 ({e.reason}); convert it to UTF-8"
                             ) from None
    try:
        # newline="": only \n ends a line (the default translation would also end one at a
        # lone \r)
        with open(source, encoding="utf-8-sig", newline="") as f:
            return split_lines(f.read())
    except UnicodeDecodeError as e:  # the codec's message names no file
        raise ValueError(f"{source}: not valid UTF-8 ({e.reason}); convert it to UTF-8"
                         ) from None
    except FileNotFoundError:  # "[Errno 2] ..." named neither the flag nor stdin's default
        raise FileNotFoundError(f"{flag} {source}: no such file" + (
            " (leave --input out, or pass -, to read stdin)" if flag == "--input" else "")
        ) from None
    except (IsADirectoryError, PermissionError) as e:  # "[Errno 21] ...": name the flag
        raise type(e)(f"{flag} {source}: {e.strerror}") from None


def looks_like_jsonl(lines: list[str]) -> bool:
    """Every non-blank line a JSON object with a string ``text``: what --jsonl reads."""
    items = [ln for ln in lines if ln.strip()]
    try:
        return bool(items) and all(isinstance(x, dict) and isinstance(x.get("text"), str)
                                   for x in map(json.loads, items))
    except json.JSONDecodeError:
        return False
