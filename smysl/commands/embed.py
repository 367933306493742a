"""``smysl embed``: embed lines of text (stdin or a file) into JSONL or ``.npy``; or, given a
JSONL/CSV/Parquet corpus (file or folder), run a resumable job (:mod:`smysl.scale.job`) into a
Parquet dataset or an index."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from smysl.commands import check_output_folder, count, given
from smysl.commands._lines import looks_like_jsonl, read_lines
from smysl.commands._model import add_model_arguments, load_model
from smysl.commands._toolkit import blank_rows, shown_rows, source_name
from smysl.files import is_special, output, replacing
from smysl.providers.errors import IncompleteEmbeddingError
from smysl.tokenize import InputTooLongError

if TYPE_CHECKING:
    from smysl.base import BaseEmbedder
    from smysl.toolkit.chunking import ChunkConfig

HELP = ("embed lines of text from stdin or a file into JSONL/.npy, or a JSONL/CSV/Parquet "
        "corpus into a Parquet dataset or an index (resumable)")

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl embed --model qwen3-embedding:0.6b -i docs.txt -o docs.jsonl",
     "a vector per line, as documents"),
    ("smysl embed --model qwen3-embedding:0.6b --query -i questions.txt -o q.npy",
     "as queries (default task)"),
    ("smysl embed --model qwen3-embedding:0.6b --task \"Find the FAQ answer\" -i q.txt",
     "your own instruction"),
    ("smysl embed --model qwen3-embedding:0.6b --dimensions 256 -i corpus/ -o vectors/",
     "JSONL/CSV/Parquet rows into a Parquet dataset; rerun resumes"),
    ("smysl embed --model qwen3-embedding:0.6b -i corpus/ -o lancedb:kb --chunk-tokens 512",
     "into a LanceDB index, chunked"),
    ("smysl embed --model Qwen/Qwen3-Embedding-8B -i corpus/ -o vectors/ --ray auto --actors 8",
     "on a Ray cluster"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    role = p.add_mutually_exclusive_group()
    role.add_argument("--task", help="embed as queries with this instruction (or preset name; "
                      "'': none, as documents)")
    role.add_argument("--query", action="store_true", help="embed as queries, default task")
    role.add_argument("--document", action="store_true", help="embed as documents (default)")
    p.add_argument("--dimensions", type=int, help="Matryoshka output size (32..hidden)")
    p.add_argument("--truncate", action="store_true", help="truncate over-long inputs (else error)")
    p.add_argument("--input", "-i", default="-",
                   help="text file, one input per line (- = stdin); or a corpus: a .jsonl, .csv "
                        "or .parquet file, or a folder of them")
    p.add_argument("--output", "-o", default="-",
                   help="output .jsonl or .npy (- = stdout JSONL); for a corpus a folder "
                        "(Parquet dataset) or an index: lancedb:PATH, qdrant:URL, postgres:DSN")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # defaults of None, resolved in _run_job: a flag given where it does nothing is an error
    job = p.add_argument_group("corpus jobs (--input a .jsonl/.csv/.parquet file or folder)")
    job.add_argument("--id-field", help="column with each row's id (default: id)")
    job.add_argument("--text-field", help="column with the text (default: text)")
    job.add_argument("--skip-bad-rows", action="store_true", default=None,
                     help="report and skip broken rows (default: stop at the first, naming it)")
    job.add_argument("--shard-rows", type=count,
                     help="rows per shard, the unit a rerun resumes from (default: 10000)")
    job.add_argument("--batch-size", type=count, help="texts per embed+write step (default: 256)")
    job.add_argument("--chunk-tokens", type=int,
                     help="split texts into chunks of this many tokens (ids ROW-ID#n; an index "
                          "always chunks, 256 by default)")
    job.add_argument("--overlap", type=int,
                     help="with --chunk-tokens: tokens shared by adjacent chunks (default: 32)")
    job.add_argument("--table", help="index table / collection name (default: chunks)")
    job.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="embed on a Ray cluster (HOST:PORT, auto; no value: $RAY_ADDRESS or "
                          "a local cluster), one loaded model per actor")
    job.add_argument("--actors", type=count, help="with --ray: Ray actors (default: 2)")
    job.add_argument("--gpus-per-actor", type=float,
                     help="with --ray: GPUs per Ray actor (default 0; 1: one model per GPU)")


#: The corpus-job flags (argparse dests); their defaults are JobConfig's, ChunkConfig's and
#: RayConfig's.
JOB_FLAGS = ("id_field", "text_field", "skip_bad_rows", "shard_rows", "batch_size",
             "chunk_tokens", "overlap", "table", "ray", "actors", "gpus_per_actor")


def _flags(args: argparse.Namespace, dests: list[str]) -> list[str]:
    """The command-line spelling of those of ``dests`` that were given."""
    values = vars(args)
    return ["--" + d.replace("_", "-") for d in dests if values[d] is not None]


def run(args: argparse.Namespace) -> int:
    from smysl.prompts import resolve_task
    from smysl.scale.sources import is_input, other_data

    # a misspelt preset or a role word needs no model to be refused (found after the load)
    resolve_task(args.task)
    if args.output in ("/dev/stdout", "/dev/fd/1"):  # stdout redirected to a file: no suffix
        args.output = "-"
    if args.input != "-" and is_input(args.input):
        return _run_job(args)
    problem = other_data(args.input) if args.input != "-" else None
    if problem is not None:  # its lines would be embedded as texts: raw JSON, compressed bytes
        raise ValueError(problem)
    named = _flags(args, list(JOB_FLAGS))
    if named:  # lines mode: they were ignored without a word (--ray embedded locally)
        raise ValueError(f"{', '.join(named)}: corpus-job flag(s), for --input a .jsonl, .csv "
                         f"or .parquet file or a folder of them; {args.input} is read as lines "
                         f"of text")
    _check_lines_output(args.output)
    lines = read_lines(args.input)
    if args.input == "-" and looks_like_jsonl(lines):  # as smysl rerank says it
        print("smysl embed: warning: stdin looks like JSONL but is embedded one text per line, "
              "JSON and all; to embed a corpus's text field, give its file with --input",
              file=sys.stderr)
    blank = blank_rows(lines)
    if blank:  # kept (vector n is line n), but said: a stray blank line became a junk row
        print(f"smysl embed: warning: {len(blank)} empty or whitespace-only line(s) of "
              f"{source_name(args.input)} (line {shown_rows(blank)}) hold no words: their "
              "vectors mean nothing; kept so that vector n is line n", file=sys.stderr)
    model = load_model(args.model, args)
    task = model.choose_instruction(args.task, role="query") if args.task or args.query else None
    progress = not args.no_progress and len(lines) >= 64 and sys.stderr.isatty()
    try:
        vectors = model.embed(lines, instruction=task, dimensions=args.dimensions,
                              truncate=args.truncate, progress=progress)
    except InputTooLongError as e:  # named by its line (the index counted from 0)
        where = "" if args.input == "-" else f" of {args.input}"
        raise ValueError(e.describe(f"line {e.index + 1}{where}", audience="cli")) from None
    except BaseException as e:  # a paid API's failure part-way: what was spent is still said
        if spent := model.usage_report():
            print(f"smysl embed: spent before the error: {spent}", file=sys.stderr)
        if isinstance(e, IncompleteEmbeddingError) and e.done:
            print(f"smysl embed: the {len(e.done)} lines embedded before it are not kept "
                  "between runs; a corpus job (--input FILE.jsonl --output DIR) keeps its rows "
                  "and resumes", file=sys.stderr)
        raise
    usage = model.usage_report()
    # into a file of its own, renamed when whole: a Ctrl-C while writing left a shorter file
    # that passed for the result (an old one at that path lost)
    if args.output.lower().endswith(".npy"):
        import numpy as np

        # the name as given (np.save adds ".npy" to x.NPY)
        with replacing(Path(args.output), binary=True) as f:
            np.save(f, vectors)
    else:
        with output(args.output) as out:
            for i, (text, vec) in enumerate(zip(lines, vectors, strict=True)):
                out.write(json.dumps({"index": i, "text": text,
                                      "embedding": [float(x) for x in vec]},
                                     ensure_ascii=False) + "\n")
    print(f"embedded {len(lines)} texts -> {vectors.shape[1]} dims"
          + (f"; {usage}" if usage else ""), file=sys.stderr)
    return 0


def _check_lines_output(output: str) -> None:
    """Refuse, before anything is embedded, an output that lines of text cannot go to."""
    from pathlib import Path

    from smysl.scale.job import is_store, shown_output

    if output == "-" or is_special(output):  # /dev/null, /dev/stdout: JSONL written there
        return
    if is_store(output) or Path(output).is_dir() or output.endswith(("/", os.sep)):
        raise ValueError(f"--output {shown_output(output)}: lines of text are written to a "
                         ".jsonl or .npy file (or stdout); a folder or an index takes a "
                         "corpus: --input a .jsonl, .csv or .parquet file, or a folder of them")
    if not output.lower().endswith((".jsonl", ".ndjson", ".npy")):  # x.csv got JSONL
        raise ValueError(f"--output {output}: lines of text are written to a .jsonl or .npy "
                         f"file (or stdout: -)")
    check_output_folder(output)


#: Names of files, not folders: refused as a corpus job's ``--output`` (a folder of Parquet
#: shards; ``x.parquet`` is a common name for such a folder, and stays allowed).
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".npy", ".csv", ".tsv", ".txt")


def _run_job(args: argparse.Namespace) -> int:
    from smysl.scale.job import is_store
    from smysl.toolkit.chunking import ChunkConfig

    unused = [*(_flags(args, ["actors", "gpus_per_actor"]) if args.ray is None else []),
              *(_flags(args, ["overlap"]) if args.chunk_tokens is None else []),
              *(_flags(args, ["table"]) if not is_store(args.output) else [])]
    if unused:
        verb = "does" if len(unused) == 1 else "do"
        raise ValueError(f"{', '.join(unused)} {verb} nothing here: --actors and "
                         f"--gpus-per-actor go with --ray, --overlap with --chunk-tokens, "
                         f"--table with an index output")
    # a file's name (x.csv, x.ndjson) made a folder of Parquet shards by that name
    if ((not is_store(args.output) and args.output.lower().endswith(_FILE_SUFFIXES))
            or args.output == "-"):
        raise ValueError(f"--output {args.output}: a corpus job writes a folder (Parquet "
                         "dataset) or an index (lancedb:PATH, qdrant:URL, postgres:DSN), not "
                         "a file")
    chunk = (ChunkConfig(max_tokens=args.chunk_tokens, **given(args, overlap="overlap"))
             if args.chunk_tokens is not None else None)
    if args.actors is not None and args.actors < 1:
        raise ValueError(f"--actors must be >= 1, got {args.actors}")
    with warnings.catch_warnings():  # the job's warnings (unread files) as one plain line
        warnings.showwarning = lambda message, *_, **__: print(
            f"smysl embed: warning: {message}", file=sys.stderr)
        if args.ray is not None:
            from smysl.commands._model import model_options
            from smysl.scale.ray_data import RayConfig, RayEmbedder

            model: BaseEmbedder = RayEmbedder(args.model, model_options(args), RayConfig(
                address=args.ray or None,
                **given(args, actors="actors", num_gpus="gpus_per_actor")))
        else:
            model = load_model(args.model, args)
        with model:
            return _job(args, model, chunk)


def _job(args: argparse.Namespace, model: BaseEmbedder, chunk: ChunkConfig | None) -> int:
    from smysl.scale.job import JobConfig, JobInterrupted, run_job

    task = model.choose_instruction(args.task, role="query") if args.task or args.query else None
    config = JobConfig(output=args.output, dimensions=args.dimensions, instruction=task,
                       chunk=chunk, truncate=args.truncate,
                       **given(args, id_field="id_field", text_field="text_field",
                               shard_rows="shard_rows", batch_size="batch_size",
                               skip_bad_rows="skip_bad_rows", table="table"))
    try:
        report = run_job(model, [args.input], config,
                         progress=not args.no_progress and sys.stderr.isatty(),
                         on_bad_row=lambda where: print(f"skipped bad row: {where}",
                                                        file=sys.stderr))
    except JobInterrupted as e:  # exit status 130 (smysl.cli)
        with contextlib.suppress(OSError, ValueError):  # stderr's reader gone too
            print(f"smysl embed: {e.report.interrupted()}", file=sys.stderr)
        raise
    print(report.summary(), file=sys.stderr)
    return 0
