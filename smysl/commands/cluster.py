"""``smysl cluster``: k-means (chosen or estimated k) or HDBSCAN, with representative texts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from smysl.commands import given
from smysl.commands._model import add_model_arguments, load_model
from smysl.commands._toolkit import (
    add_table_arguments,
    check_apart,
    flags_for,
    progress,
    read_input,
    refuse_overwrite,
    rows_of,
    source_name,
    with_text,
)
from smysl.files import output

HELP = "cluster texts (k-means with --k or estimated k, or --method hdbscan)"

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl cluster --model qwen3-embedding:0.6b -i texts.csv --k 12 -o clusters.csv "
     "--summary c.json",
     "k-means"),
    ("smysl cluster --model qwen3-embedding:0.6b -i texts.csv --method hdbscan "
     "--min-cluster-size 10",
     ""),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_table_arguments(p)
    p.add_argument("--method", choices=["kmeans", "hdbscan"], default="kmeans")
    p.add_argument("--k", type=int, help="k-means: number of clusters (default: estimated)")
    p.add_argument("--k-max", type=int, default=None,
                   help="k-means without --k: largest k tried when estimating (default 30)")
    p.add_argument("--min-cluster-size", type=int, default=None,
                   help="HDBSCAN: smallest cluster (default 5)")
    p.add_argument("--single-cluster", action="store_true",
                   help="HDBSCAN: texts that form one group may be returned as one cluster "
                        "(off: HDBSCAN never returns one cluster alone, and such texts are "
                        "all noise)")
    p.add_argument("--representatives", type=int, default=3, help="texts shown per cluster")
    p.add_argument("--seed", type=int, default=None,
                   help="k-means: seed of its initialisation and silhouette sample (default 0)")
    p.add_argument("--summary", help="write clusters with representative texts to this .json "
                                     "(- = stdout, -o then a file)")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model takes (else an error)")


def _refuse_unused(args: argparse.Namespace) -> None:
    """A flag the chosen method would ignore is an error: an option never silently does
    nothing."""
    if args.method == "hdbscan":
        named = [f for f, v in (("--k", args.k), ("--k-max", args.k_max)) if v is not None]
        if named:
            verb = "does" if len(named) == 1 else "do"
            raise ValueError(f"{' and '.join(named)} {verb} nothing with --method hdbscan "
                             "(it finds the number of clusters itself)")
        if args.seed is not None:
            raise ValueError("--seed does nothing with --method hdbscan (it draws nothing at "
                             "random)")
    elif args.min_cluster_size is not None or args.single_cluster:
        flag = "--min-cluster-size" if args.min_cluster_size is not None else "--single-cluster"
        raise ValueError(f"{flag} is for --method hdbscan")
    elif args.k is not None and args.k_max is not None:
        raise ValueError("--k-max bounds the estimate of k: it does nothing with --k")


def run(args: argparse.Namespace) -> int:
    from smysl.providers.usage import count_of
    from smysl.toolkit.cluster import ClusterConfig, cluster_texts
    from smysl.toolkit.io import check_file, check_output, write_rows

    _refuse_unused(args)
    check_output(args.output)
    check_apart({"-i": args.input, "-o": args.output, "--summary": args.summary})
    if args.summary:  # before the work, which a path in no folder lost at the end
        check_file(args.summary, "--summary")
    with flags_for({"k": "--k", "k_max": "--k-max", "min_cluster_size": "--min-cluster-size",
                    "representatives": "--representatives", "seed": "--seed"}):
        config = ClusterConfig(method=args.method, k=args.k,
                               **given(args, k_max="k_max", min_cluster_size="min_cluster_size"),
                               single_cluster=args.single_cluster,
                               representatives=args.representatives,
                               **given(args, seed="seed"),
                               instruction=args.instruction, dimensions=args.dimensions,
                               truncate=args.truncate)
    texts, rows = read_input(args.input, args.text_field)
    refuse_overwrite(rows, ["cluster"], args.input)
    kept = with_text(texts, args.input, "cluster", "their cluster is null")
    if len(kept) < 2 and len(kept) < len(texts):  # blank rows left too few
        raise ValueError(f"clustering needs at least two texts; {source_name(args.input)} has "
                         f"{len(kept)} "
                         f"(the other {len(texts) - len(kept)} rows have no text)")
    texts = [texts[i] for i in kept]
    config.check_count(len(texts))  # before the model loads and embeds them all
    model = load_model(args.model, args)
    with rows_of(args.input, kept):
        result = cluster_texts(model, texts, config, progress=progress(args))
    clusters: list[int | None] = [None] * len(rows)
    for i, c in zip(kept, result.labels, strict=True):
        clusters[i] = int(c)
    write_rows(args.output, [{**r, "cluster": c} for r, c in zip(rows, clusters, strict=True)])
    summary: list[dict[str, Any]] = [{"cluster": c.label, "size": c.size,
                "representatives": [texts[i] for i in c.representatives]}
               for c in result.clusters]
    if args.summary:
        with output(args.summary) as f:  # - is stdout (-o a file: check_apart)
            json.dump({"k": result.k, "noise": int((result.labels == -1).sum()),
                       "silhouettes": result.silhouettes, "clusters": summary}, f,
                      ensure_ascii=False, indent=2)
            f.write("\n")
    noise = int((result.labels == -1).sum())
    print(count_of(result.k, "cluster") + (f", {noise} noise" if noise else ""),
          file=sys.stderr)
    if noise == len(texts):
        print("  every text is noise: HDBSCAN found no dense group of --min-cluster-size "
              f"({config.min_cluster_size}) that splits from the rest"
              + ("" if config.single_cluster else
                 "; it never returns one cluster alone (e.g. texts that are all alike): "
                 "--single-cluster allows that")
              + ", a smaller --min-cluster-size finds smaller groups", file=sys.stderr)
    for c in summary[:20]:
        print(f"  [{c['cluster']}] {c['size']:>5}  " + " | ".join(
            str(t)[:60] for t in c["representatives"]), file=sys.stderr)
    return 0
