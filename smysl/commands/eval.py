"""``smysl eval``: score models on Russian and English tasks; write JSON, Markdown and plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smysl.commands import given
from smysl.commands._model import add_model_arguments, model_options

HELP = ("evaluate models on STS, pair classification, classification, clustering, retrieval "
        "and reranking")

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl eval --list-tasks",
     "names, kinds and metrics"),
    ("smysl eval -m qwen3-embedding:0.6b -t sts-en --limit 50 --no-plots --out runs/smoke",
     "a smoke run"),
    ("smysl eval -m qwen3-embedding:0.6b -d 32,64,256,1024 -t sts,retrieval --out runs/q06",
     "Matryoshka sizes"),
    ("smysl eval -m qwen3-embedding:0.6b --quantize int8 --compare runs/q06 --out runs/int8",
     "against an earlier run"),
    ("smysl eval -m qwen3-embedding:0.6b -r Qwen/Qwen3-Reranker-0.6B -t rerank --out runs/rr",
     "with a reranker"),
)


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        out = ()
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return out


def _names(text: str) -> tuple[str, ...]:
    out = tuple(x.strip() for x in text.split(",") if x.strip())
    if not out:  # -t "" ran every task
        raise argparse.ArgumentTypeError(f"expected comma-separated task names, got {text!r}")
    return out


def _instruction(text: str) -> tuple[str, str]:
    task, sep, instruction = text.partition("=")
    if not sep or not task.strip():
        raise argparse.ArgumentTypeError(f"expected TASK=INSTRUCTION, got {text!r}")
    return task.strip(), instruction


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", default=[],
                   help="model string (repeat to compare models): st:all-minilm-l6-v2, a "
                        "checkpoint dir, a Hub id, provider:model")
    # extend: a second -t or -d added to the first (the last one alone was kept)
    p.add_argument("--tasks", "-t", type=_names, action="extend", default=[],
                   help="comma-separated tasks, kinds (sts, pair, classification, clustering, "
                        "retrieval) or prefixes (xquad, intents); default all; --list-tasks")
    p.add_argument("--dimensions", "-d", type=_ints, action="extend", default=[],
                   help="Matryoshka sizes to score besides the native one, e.g. 32,64,128,256")
    p.add_argument("--out", "-o", type=Path, default=None,
                   help="report folder (default: eval-results/<time>)")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset folder (default: ../shared/datasets next to the repository)")
    p.add_argument("--limit", type=int, default=None,
                   help="first N rows per task only (smoke tests; not comparable)")
    p.add_argument("--instruction", action="append", type=_instruction, default=[],
                   metavar="TASK=TEXT",
                   help="override a task's instruction ('' for none); TASK is a task name from "
                        "--list-tasks (an unknown one is refused)")
    p.add_argument("--no-instructions", action="store_true",
                   help="embed every text without instructions")
    p.add_argument("--compare", action="append", type=Path, default=[], metavar="DIR",
                   help="earlier run folder to include in the summary and throughput plot")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="keep embeddings here and reuse them in later runs")
    p.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("reranking (runs only with --reranker)")
    g.add_argument("--reranker", "-r", default=None, metavar="MODEL",
                   help="reranker model string (Qwen3-Reranker dir or Hub id, siliconflow:..., "
                        "tei:URL, ...): reranks each embedder's top candidates on xquad-ru and "
                        "xquad-en (tasks xquad-ru-rerank, xquad-en-rerank; '-t rerank' alone)")
    g.add_argument("--rerank-top", type=int, default=None, metavar="N",
                   help="candidates per query: the embedder's top N (default 50)")
    g.add_argument("--rerank-queries", type=int, default=None, metavar="N",
                   help="rerank N queries spread over each task (full corpus; short runs)")
    add_model_arguments(p, model=False)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list-tasks", action="store_true", help="print the tasks and exit")


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    from smysl.eval import EvalConfig
    from smysl.eval import run as run_eval
    from smysl.eval.data import DEFAULT_DATA_DIR
    from smysl.eval.rerank import RERANK_TASKS
    from smysl.eval.tasks import TASKS
    from smysl.options import ModelOptions
    from smysl.registry import reranker_options

    if not args.list_tasks and not args.model:
        raise ValueError("give at least one --model/-m (or --list-tasks)")
    if args.list_tasks:
        rows: list[tuple[str, str, str, str]] = [
            (t.name, t.kind, t.metric_label, t.description) for t in TASKS.values()]
        rows += [(t.name, t.kind, t.metric_label, t.description) for t in RERANK_TASKS.values()]
        for name, kind, label, description in rows:
            print(f"{name:24s} {kind:15s} {label:18s} {description}")
        return 0
    if args.reranker is None:  # an option never silently does nothing
        named = [f for f, v in (("--rerank-top", args.rerank_top),
                                ("--rerank-queries", args.rerank_queries)) if v is not None]
        if named:
            raise ValueError(f"{' and '.join(named)} appl{'y' if len(named) > 1 else 'ies'} "
                             "to reranking: add --reranker MODEL")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # httpx logs every request's URL at INFO, a provider URL's password with it
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out = args.out or Path("eval-results") / time.strftime("%Y%m%d-%H%M%S")
    options = model_options(args)
    cfg = EvalConfig(
        models=tuple(args.model), tasks=tuple(args.tasks), dimensions=tuple(args.dimensions),
        data_dir=args.data or DEFAULT_DATA_DIR, out_dir=out, limit=args.limit, seed=args.seed,
        use_instructions=not args.no_instructions, instructions=dict(args.instruction),
        model_options=options, cache_dir=args.cache, compare=tuple(args.compare),
        progress=not args.no_progress and sys.stderr.isatty(), plots=not args.no_plots,
        reranker=args.reranker, rerank_queries=args.rerank_queries,
        **given(args, rerank_top="rerank_top"),
        reranker_options=(reranker_options(args.reranker, options) if args.reranker
                          else ModelOptions()))
    results = run_eval(cfg)
    for r in results:
        print(f"{r.model}: " + ", ".join(
            [f"{t.task} {t.main(r.dimensions):.4f}" for t in r.tasks]
            + [f"{x.task} nDCG@10 {x.before['ndcg_at_10']:.4f} -> {x.after['ndcg_at_10']:.4f}"
               for x in r.reranking]))
    print(f"reports in {out}", file=sys.stderr)
    return 0


