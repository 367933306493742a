"""``smysl dedup``: near-duplicate groups above a similarity threshold, with a report."""

from __future__ import annotations

import argparse
import json
import sys

from smysl.commands._model import add_model_arguments, load_model
from smysl.commands._toolkit import (
    add_table_arguments,
    progress,
)

HELP = "find near-duplicate texts (groups above --threshold) and write a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_table_arguments(p)
    p.add_argument("--threshold", type=float, default=0.9, help="cosine similarity (default 0.9)")
    p.add_argument("--neighbors", type=int, default=10, help="candidates per text (blocking)")
    p.add_argument("--approximate", action="store_true",
                   help="block through an approximate index (LanceDB IVF-HNSW)")
    p.add_argument("--unique", action="store_true",
                   help="write only kept rows (one per group, plus unique texts)")
    p.add_argument("--report", help="write the report with groups and pairs to this .json")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from smysl.toolkit.dedup import DedupConfig, dedup_texts
    from smysl.toolkit.io import read_column, write_rows
    from smysl.toolkit.store import StoreConfig

    model = load_model(args.model, args)
    texts, rows = read_column(args.input, args.text_field)
    with tempfile.TemporaryDirectory(prefix="smysl-dedup-") as tmp:
        store = StoreConfig(uri=tmp, table="dedup") if args.approximate else None
        config = DedupConfig(threshold=args.threshold, neighbors=args.neighbors,
                             exact=not args.approximate, store=store,
                             instruction=args.instruction, dimensions=args.dimensions)
        result = dedup_texts(model, texts, config, progress=progress(args))
    groups = result.group_of
    keep = set(result.keep)
    out = [{**r, "group": int(g), "keep": i in keep}
           for i, (r, g) in enumerate(zip(rows, groups, strict=True))
           if not args.unique or i in keep]
    write_rows(args.output, out)
    report = result.report()
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({**report,
                       "groups_detail": [[{"index": i, "text": texts[i]} for i in g]
                                         for g in result.groups],
                       "pairs_detail": [{"a": i, "b": j, "score": round(s, 6)}
                                        for i, j, s in result.pairs]},
                      f, ensure_ascii=False, indent=2)
    print(" ".join(f"{k}={v}" for k, v in report.items()), file=sys.stderr)
    return 0
