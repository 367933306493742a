"""``smysl embed``: embed lines of text (stdin or a file) into JSONL or ``.npy``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from smysl.commands._model import add_model_arguments, load_model

HELP = "embed lines of text from stdin or a file; write JSONL (default) or .npy"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    role = p.add_mutually_exclusive_group()
    role.add_argument("--task", help="embed as queries with this instruction (or preset name)")
    role.add_argument("--query", action="store_true", help="embed as queries, default task")
    role.add_argument("--document", action="store_true", help="embed as documents (default)")
    p.add_argument("--dimensions", type=int, help="Matryoshka output size (32..hidden)")
    p.add_argument("--truncate", action="store_true", help="truncate over-long inputs (else error)")
    p.add_argument("--input", "-i", default="-", help="text file, one input per line (- = stdin)")
    p.add_argument("--output", "-o", default="-", help="output .jsonl or .npy (- = stdout JSONL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.input == "-":
        lines = sys.stdin.read().splitlines()
    else:
        lines = Path(args.input).read_text(encoding="utf-8").splitlines()
    model = load_model(args.model, args)
    task = model.choose_instruction(args.task, role="query") if args.task or args.query else None
    progress = not args.no_progress and len(lines) >= 64 and sys.stderr.isatty()
    vectors = model.embed(lines, instruction=task, dimensions=args.dimensions,
                          truncate=args.truncate, progress=progress)
    usage = model.usage_report()
    if args.output.endswith(".npy"):
        import numpy as np

        np.save(args.output, vectors)
    else:
        with contextlib.ExitStack() as stack:
            out = sys.stdout if args.output == "-" else stack.enter_context(
                open(args.output, "w", encoding="utf-8"))
            for i, (text, vec) in enumerate(zip(lines, vectors, strict=True)):
                out.write(json.dumps({"index": i, "text": text,
                                      "embedding": [float(x) for x in vec]},
                                     ensure_ascii=False) + "\n")
    print(f"embedded {len(lines)} texts -> {vectors.shape[1]} dims"
          + (f"; {usage}" if usage else ""), file=sys.stderr)
    return 0
