"""``smysl tune``: measure the CPU engine's thread count (unless ``--threads`` fixes it), slice
size, bulk-call lanes and int4's dequantising threshold on this machine for one model and path,
and keep the results for every later load (:mod:`smysl.qwen3.tuning`)."""

from __future__ import annotations

import argparse
import sys

from smysl.commands._model import add_model_arguments, load_model

HELP = ("measure the CPU engine's thread count (unless --threads), slice size, bulk-call "
        "lanes and int4's dequantising threshold for a model and path on this machine "
        "(--device cpu unless given); engines use them from then on (kept in $SMYSL_TUNING, "
        "else $XDG_CACHE_HOME/smysl/tuning.json, ~/.cache by default)")

#: Command lines shown under ``--help`` (command, what it does); tests parse each.
EXAMPLES = (
    ("smysl tune --model qwen3-embedding:0.6b",
     "measure and keep the settings for this machine"),
    ("smysl tune --model qwen3-embedding:0.6b --quantize int4 --dry-run",
     "print only"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--slices", default=None,
                   help="slice sizes to try, comma-separated tokens (default: powers of two "
                        "from 128 to 2048)")
    p.add_argument("--layers", type=int, default=2,
                   help="decoder layers to time (real shapes; default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per size (default: 3)")
    p.add_argument("--dry-run", action="store_true", help="measure and print, store nothing")


def _table(setting: str, noun: str, seconds: dict[int, float], chosen: int) -> None:
    """The measurements as a markdown table, each relative to the chosen setting."""
    print(f"| {setting} | seconds per pass | vs the chosen {noun} |\n|---|---|---|")
    for s, secs in sorted(seconds.items()):
        print(f"| {s}{' (chosen)' if s == chosen else ''} | {secs:.3f} | "
              f"{secs / seconds[chosen]:.2f} |")


def run(args: argparse.Namespace) -> int:
    import torch

    from smysl.cpus import usable_cpus
    from smysl.providers.usage import count_of
    from smysl.qwen3 import tuning
    from smysl.qwen3.embedder import Embedder
    from smysl.qwen3.engine import Engine
    from smysl.registry import split

    scheme, rest = split(args.model)
    if scheme not in ("qwen3", "ollama-store"):  # before the load: its error named --device
        also = (f" (this model in it: ollama-store:{rest})"
                if scheme == "ollama" and "://" not in rest else "")
        raise ValueError(f"smysl tune measures smysl's own CPU engine{also}: a local Qwen3 "
                         f"checkpoint or GGUF file ({args.model!r} runs through the "
                         f"{scheme}: backend)")

    try:
        slices = (tuple(sorted({int(s) for s in args.slices.split(",")}))
                  if args.slices is not None else tuning.SLICES)
    except ValueError:
        raise ValueError(f"--slices takes comma-separated token counts, not {args.slices!r}"
                         ) from None
    if min(slices) < 1 or args.layers < 1 or args.rounds < 1:
        raise ValueError("--slices, --layers and --rounds take positive numbers")
    if max(slices) > tuning.MAX_SLICE:
        raise ValueError(f"--slices: at most {tuning.MAX_SLICE} tokens (slices bound the memory "
                         "of long inputs)")
    if args.device is None:  # the CPU engine is what is tuned, also on a machine with a GPU
        args.device = "cpu"
    emb = load_model(args.model, args)
    engine = emb.engine if isinstance(emb, Embedder) else None
    if not isinstance(engine, Engine) or engine.torch_device.type != "cpu":
        raise ValueError("smysl tune measures smysl's own CPU engine: a local Qwen3 "
                         "checkpoint or GGUF file on --device cpu")
    if args.layers > engine.model.cfg.num_hidden_layers:
        raise ValueError(f"--layers {args.layers}: the model has "
                         f"{engine.model.cfg.num_hidden_layers} decoder layers")
    threads = None
    tk = tuning.threads_key(engine.kernel, engine.torch_dtype, engine.model.cfg)
    if args.threads is not None and args.threads > (cpus := usable_cpus()):
        print(f"note: --threads {args.threads} is more than the {count_of(cpus, 'CPU')} this "
              "process may use: threads then wait for each other, and these timings show it",
              file=sys.stderr)
    if args.threads is not None:
        # slices are stored under the thread count they were measured with, and a load finds
        # them only when it runs that count
        stored = tuning.lookup_threads(tk)
        variables = tuning.environment_threads()
        if variables is not None:
            print(f"note: these slices apply to loads that run "
                  f"{count_of(args.threads, 'thread')}; loads without --threads run the count "
                  f"{variables} sets", file=sys.stderr)
        elif stored is None:
            print(f"note: these slices apply to loads that run "
                  f"{count_of(args.threads, 'thread')} (--threads {args.threads}); loads "
                  "without --threads run torch's default "
                  "count, up to the CPUs this process may use. Run tune without --threads to "
                  "measure and store a thread count for them", file=sys.stderr)
        elif stored.threads != args.threads:
            print(f"note: loads without --threads run the {count_of(stored.threads, 'thread')} "
                  f"measured earlier, not these slices' {args.threads}", file=sys.stderr)
    if args.threads is None and (variables := tuning.environment_threads()) is not None:
        # loads under this environment run its count, never a measured one (load_threads):
        # slices measured under another count would be stored under a key no load asks for
        print(f"note: {variables} is set: loads run that count, so the slices are measured "
              f"under it ({count_of(torch.get_num_threads(), 'thread')}); unset it to "
              "measure the thread count too", file=sys.stderr)
    elif args.threads is None:  # measured first: the best slice depends on it
        print(f"measuring {tk}\n({count_of(args.layers, 'layer')}, "
              f"{count_of(args.rounds, 'round')} per count)", file=sys.stderr)
        threads = tuning.tune_threads(engine, layers=args.layers, rounds=args.rounds)
        _table("threads", "count", threads.seconds, threads.threads)
        print()
        torch.set_num_threads(threads.threads)  # the slices are timed with it
    k = tuning.key(engine)
    print(f"measuring {k}\n({count_of(args.layers, 'layer')}, "
          f"{count_of(args.rounds, 'round')} per size)", file=sys.stderr)
    tuned = tuning.tune(engine, slices=slices, layers=args.layers, rounds=args.rounds)
    _table("slice tokens", "size", tuned.seconds, tuned.chunk)
    if tuned.lane_seconds and tuned.lanes is not None:
        print(f"\nbulk calls, {count_of(torch.get_num_threads(), 'thread')} shared by the "
              "lanes:")
        _table("lanes", "count", tuned.lane_seconds, tuned.lanes)
    if tuned.dequant_rows is not None:
        rows = ("never (the int4 kernel was faster at every size)"
                if tuned.dequant_rows == tuning.NEVER else f"from {tuned.dequant_rows} rows")
        print(f"\nint4 layers dequantise {rows}")
    if args.dry_run:
        return 0
    if threads is not None:
        tuning.store(tk, threads)
    print(f"\nstored in {tuning.store(k, tuned)}", file=sys.stderr)
    return 0
