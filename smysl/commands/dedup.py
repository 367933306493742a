"""``smysl dedup``: near-duplicate groups above a similarity threshold, with a report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from smysl.commands._model import add_model_arguments, load_model
from smysl.commands._toolkit import (
    add_table_arguments,
    check_apart,
    flags_for,
    progress,
    read_input,
    refuse_overwrite,
    rows_of,
    with_text,
)
from smysl.files import output

HELP = "find near-duplicate texts (groups above --threshold) and write a report"

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl dedup --model qwen3-embedding:0.6b -i texts.jsonl --threshold 0.9 --report dedup.json",
     "groups"),
    ("smysl dedup --model qwen3-embedding:0.6b -i texts.jsonl --threshold 0.9 "
     "--unique -o unique.jsonl",
     "keep one of each"),
)

#: The columns the output adds to the input's.
ADDED = ("group", "keep", "duplicate_of")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_table_arguments(p)
    p.add_argument("--threshold", type=float, default=0.9, help="cosine similarity (default 0.9)")
    p.add_argument("--neighbors", type=int, default=10, help="candidates per text (blocking)")
    p.add_argument("--max-neighbors", type=int, default=1024,
                   help="most near-duplicates found per text (default %(default)s): a text with "
                        "more is counted as capped and said, its pairs past these may be "
                        "missing")
    p.add_argument("--approximate", action="store_true",
                   help="block through an approximate index (LanceDB IVF-HNSW) in a temporary "
                        "folder; slower than the exact default up to 100,000 texts, measured")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model takes (else an error): texts that "
                        "differ only after the cut come out as duplicates")
    p.add_argument("--unique", action="store_true",
                   help="write only kept rows: each row left out is a near-duplicate of an "
                        "earlier row kept (a group of chained near-duplicates may keep "
                        "several), or has no text")
    p.add_argument("--report", help="write the report with groups and pairs to this .json "
                                    "(- = stdout, -o then a file)")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from smysl.toolkit.dedup import DedupConfig, dedup_texts
    from smysl.toolkit.io import check_file, check_output, csv_header, write_rows
    from smysl.toolkit.store import StoreConfig

    check_output(args.output)
    check_apart({"-i": args.input, "-o": args.output, "--report": args.report})
    if args.report:  # before the work, which a path in no folder lost at the end
        check_file(args.report, "--report")
    if args.max_neighbors < args.neighbors:  # DedupConfig's words name no flag
        raise ValueError(f"--max-neighbors {args.max_neighbors} is below --neighbors "
                         f"{args.neighbors}: the widest search is at least the first")
    texts, rows = read_input(args.input, args.text_field)
    refuse_overwrite(rows, list(ADDED), args.input)
    kept = with_text(texts, args.input, "dedup",
                     "their group, keep and duplicate_of are null"
                     + (", and --unique leaves them out" if args.unique else ""))
    with tempfile.TemporaryDirectory(prefix="smysl-dedup-") as tmp:
        store = StoreConfig(uri=tmp, table="dedup") if args.approximate else None
        # checked (the threshold's range) before the model loads
        with flags_for({"threshold": "--threshold", "neighbors": "--neighbors",
                        "max_neighbors": "--max-neighbors"}):
            config = DedupConfig(threshold=args.threshold, neighbors=args.neighbors,
                                 max_neighbors=args.max_neighbors,
                                 exact=not args.approximate, store=store,
                                 instruction=args.instruction, dimensions=args.dimensions,
                                 truncate=args.truncate)
        model = load_model(args.model, args)
        with rows_of(args.input, kept):
            result = dedup_texts(model, [texts[i] for i in kept], config,
                                 progress=progress(args))
    # the result counts the texts embedded; rows are the input's (0-based), blank ones too
    added: list[dict[str, Any]] = [dict.fromkeys(ADDED) for _ in rows]
    for i, g, d in zip(kept, result.group_of, result.duplicate_of, strict=True):
        added[i] = {"group": int(g), "keep": d < 0, "duplicate_of": kept[d] if d >= 0 else None}
    out = [{**r, **a} for r, a in zip(rows, added, strict=True)
           if not args.unique or a["keep"]]
    write_rows(args.output, out, [*csv_header(args.input), *ADDED])
    report = result.report()
    if len(kept) < len(rows):
        report["no_text"] = len(rows) - len(kept)
    if args.report:
        with output(args.report) as f:  # - is stdout (-o a file: check_apart)
            json.dump({**report,
                       "groups_detail": [[{"index": kept[i], "text": texts[kept[i]],
                                           "duplicate_of": added[kept[i]]["duplicate_of"]}
                                          for i in g] for g in result.groups],
                       "pairs_detail": [{"a": kept[i], "b": kept[j], "score": round(s, 6)}
                                        for i, j, s in result.pairs]},
                      f, ensure_ascii=False, indent=2)
            f.write("\n")
    print(" ".join(f"{k}={v}" for k, v in report.items()), file=sys.stderr)
    if result.capped:
        print(f"smysl dedup: warning: {result.capped} texts have more than {args.max_neighbors} "
              f"near-duplicates each at threshold {args.threshold}: pairs of theirs past "
              "those may be missing, and with them groups and what is kept; raise --threshold "
              "or --max-neighbors", file=sys.stderr)
    return 0
