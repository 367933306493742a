"""``smysl rerank``: order documents by relevance to a query with any reranker: a local
Qwen3-Reranker or a remote one (``siliconflow:...``, ``tei:URL``, ``smysl:URL``...)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from smysl.commands import check_output_folder
from smysl.commands._lines import looks_like_jsonl, read_lines
from smysl.commands._model import add_model_arguments, model_options
from smysl.files import output
from smysl.rerank import PairError
from smysl.tokenize import InputTooLongError

HELP = "rank documents (JSONL or lines) against a query with a reranker; write JSONL"
MODEL_HELP = ("reranker: a Qwen3-Reranker dir or Hub id (Qwen/Qwen3-Reranker-0.6B), or "
              "scheme:model (siliconflow:..., deepinfra:..., cohere:URL, tei:URL, smysl:URL, ...)")

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl rerank --model Qwen/Qwen3-Reranker-0.6B -q \"how to reset a password?\" -i docs.txt",
     "a score per line"),
    ("smysl rerank --model Qwen/Qwen3-Reranker-0.6B -q \"...\" -i hits.jsonl --top-n "
     "5 -o best.jsonl",
     "the best 5"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_model_arguments(p, model=False)
    p.add_argument("--query", "-q", required=True, help="the query")
    p.add_argument("--instruction", default=None,
                   help="the <Instruct> line (default: the model card's web-search one)")
    p.add_argument("--input", "-i", default="-",
                   help="documents: a .jsonl/.ndjson file (a string or an object with "
                        "\"text\" per line), or any other file or stdin (-, the default): "
                        "plain text, one document per line (unless --jsonl)")
    p.add_argument("--jsonl", action="store_true",
                   help="read the input as JSONL whatever its name (for stdin)")
    p.add_argument("--output", "-o", default="-", help="output .jsonl (- = stdout)")
    p.add_argument("--top-n", type=int, default=None, help="keep the best N")
    p.add_argument("--truncate", action="store_true",
                   help="cut over-long documents (their end) instead of failing")


#: Suffixes read as JSONL; any other file, and stdin, holds one plain document per line.
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_documents(source: str, jsonl: bool = False
                   ) -> tuple[list[str], list[Any], list[int]]:
    """(texts, items, line numbers) of the input ``source`` (a file, ``-`` for stdin). A
    ``.jsonl``/``.ndjson``
    file's lines, or any input's with ``jsonl``, are strings or objects with a string
    ``text``, each item kept whole for the output; any other input's lines are their own text.
    Blank lines are skipped in both (an empty document ranked among the others, first on some
    models). Never guessed from the content: a plain line that happens to look like JSON stays
    a plain line."""
    lines = read_lines(source)
    if not jsonl and Path(source).suffix.lower() not in JSONL_SUFFIXES:
        if source == "-" and looks_like_jsonl(lines):  # stdin was guessed once: say it
            print("smysl rerank: warning: stdin looks like JSONL but is read one document per "
                  "line, JSON and all; pass --jsonl to read it as JSONL", file=sys.stderr)
        numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
        return [t for _, t in numbered], [t for _, t in numbered], [n for n, _ in numbered]
    texts, items, numbers = [], [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: line {n} is not JSON: {e}") from None
        doc = item if isinstance(item, str) else (
            item.get("text") if isinstance(item, dict) else None)
        if not isinstance(doc, str):
            raise ValueError(f"{source}: line {n}: expected a string or an object with a string "
                             "\"text\" field")
        texts.append(doc)
        items.append(item)
        numbers.append(n)
    return texts, items, numbers


def run(args: argparse.Namespace) -> int:
    from smysl.registry import load_reranker

    check_output_folder(args.output)
    if args.top_n is not None and args.top_n < 1:  # before the model loads, by its flag
        raise ValueError(f"--top-n must be >= 1, got {args.top_n}")
    if args.output.lower().endswith((".csv", ".tsv", ".json", ".parquet", ".npy")):
        # a .csv got JSON lines
        raise ValueError(f"--output {args.output}: rerank writes JSON lines; name it .jsonl")
    texts, items, numbers = read_documents(args.input, args.jsonl)
    with load_reranker(args.model, model_options(args)) as reranker:
        try:
            ranked = reranker.rerank(args.query, texts, instruction=args.instruction,
                                     top_n=args.top_n, truncate=args.truncate)
        except InputTooLongError as e:  # named by its line (blank lines skipped, from 0)
            where = "stdin" if args.input == "-" else args.input
            raise ValueError(e.describe(f"line {numbers[e.index]} of {where} with the query",
                                        audience="cli")) from None
        except PairError as e:
            if e.part != "query":
                raise
            # one query for every line: "pair 0" named a pair the command line never had
            raise ValueError(f"--query: {e.problem}") from None
        spent = reranker.usage_report()
    with output(args.output) as out:
        for rank, (i, score) in enumerate(ranked, 1):
            out.write(json.dumps({"rank": rank, "index": i, "score": score,
                                  "document": items[i]}, ensure_ascii=False) + "\n")
    print(f"reranked {len(texts)} documents" + (f", kept {len(ranked)}" if args.top_n else ""),
          file=sys.stderr)
    if spent:
        print(spent, file=sys.stderr)
    return 0
