"""A bulk ``embed`` on a simulated GPU: how much longer than the device's own time does it take?

On CUDA, :meth:`smysl.qwen3.embedder.Embedder.embed` tokenises a large call a block at a time
while earlier blocks compute. Whatever is tokenised before the first pass starts, and whatever
host work follows the last one, is time the device idles: the gap between a first pass and
the GPU's pace (issue 12: "first pass within 10% of warm"). This measures that gap without a
GPU: the engine is :class:`bench_pipeline.SimulatedDevice`, whose passes sleep on a "device"
thread for ``--pass-ms`` plus one token's time at ``--device-tok-s`` per token (the GIL free
meanwhile, as during a GPU pass); everything above it is smysl's own code on the real
tokenizer and the ``gpu_check.py`` corpus.

Variants in interleaved rounds: the code's ramp (``RAMP_BLOCKS``: the first blocks smaller,
each run as soon as it is tokenised) and ``no ramp`` (``RAMP_BLOCKS = 0``: blocks of a whole
batch, the first one tokenised before anything runs, as before); ``--ramps`` picks others.
Each round is a fresh tokenizer (a first pass: its word cache empty) and a second call (warm).

    .venv/bin/python benchmarks/bulk_start.py --device-tok-s 180000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

from bench_pipeline import SimulatedDevice
from common import TOKENIZER, corpus

from smysl.qwen3 import embedder
from smysl.tokenize import Tokenizer


def one(texts: list[str], n_tok: int, ramp: int, args: argparse.Namespace) -> dict[str, float]:
    embedder.RAMP_BLOCKS = ramp
    dev = SimulatedDevice(args.pass_ms / 1000, 1 / args.device_tok_s, True)
    emb = embedder.Embedder(dev, Tokenizer(str(TOKENIZER / "tokenizer.json"), 32768),
                            name="simulated")  # type: ignore[arg-type]
    out = {}
    submits: list[float] = []
    submit = dev.submit

    def timed_submit(batch: list[list[int]], heads: list[int] | None = None) -> Any:
        submits.append(time.perf_counter())
        return submit(batch, heads)

    dev.submit = timed_submit  # type: ignore[method-assign]
    for name in ("first", "warm"):
        busy, passes = dev.busy, dev.passes
        submits.clear()
        t = time.perf_counter()
        emb.embed(texts)
        wall = time.perf_counter() - t
        out[name] = wall
        out[f"{name}_start"] = submits[0] - t  # the device idle until the first pass
        out[f"{name}_over"] = wall / (dev.busy - busy)
        out["passes"] = dev.passes - passes
    dev.close()
    out["first_tok_s"] = n_tok / out["first"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device-tok-s", type=float, default=180_000,
                    help="the simulated device's pace (the 0.6B's warm pass on an H200: 182K)")
    ap.add_argument("--pass-ms", type=float, default=0.5, help="fixed time per pass")
    ap.add_argument("--scale", type=float, default=4.0, help="corpus scale (gpu_check: 4)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ramps", help="RAMP_BLOCKS values to compare, e.g. 4,2,0 (default: the "
                    "code's and 0)")
    args = ap.parse_args()
    texts = corpus(args.scale)
    n_tok = sum(Tokenizer(str(TOKENIZER / "tokenizer.json"), 32768).count(texts))
    ramps = [int(x) for x in args.ramps.split(",")] if args.ramps else [embedder.RAMP_BLOCKS, 0]
    variants = {f"ramp of {n} blocks" if n else "no ramp": n for n in ramps}
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = list(variants.items())
        for name, ramp in (order if r % 2 == 0 else order[::-1]):
            row = one(texts, n_tok, ramp, args)
            rows[name].append(row)
            print(f"round {r + 1} {name}: first {row['first'] * 1e3:.0f} ms "
                  f"({row['first_over']:.2f}x the device's time, first pass after "
                  f"{row['first_start'] * 1e3:.0f} ms), warm {row['warm'] * 1e3:.0f} ms "
                  f"({row['warm_over']:.2f}x), {row['passes']:.0f} passes", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{len(texts)} texts, {n_tok:,} tokens; device {args.device_tok_s:,.0f} tok/s + "
          f"{args.pass_ms} ms a pass; medians of {args.rounds} interleaved rounds\n")
    print("| blocks | first pass | device idle until | first / device time | warm | warm / "
          "device time | passes |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {name} | {med['first'] * 1e3:.0f} ms ({med['first_tok_s']:,.0f} tok/s) | "
              f"{med['first_start'] * 1e3:.0f} ms | {med['first_over']:.2f}x | "
              f"{med['warm'] * 1e3:.0f} ms | {med['warm_over']:.2f}x | {med['passes']:.0f} |")


if __name__ == "__main__":
    main()
