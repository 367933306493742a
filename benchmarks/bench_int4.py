"""int4 layers: torch's int4 kernel against the dequantised regime (a bf16 GEMM on weights
rebuilt per call, ``quantize.dequant_mm``) per row count, on the real layer shapes.

    .venv/bin/python benchmarks/bench_int4.py
    .venv/bin/python benchmarks/bench_int4.py --shapes 24576x4096 --rows 128,192,256

Prints, per weight and row count, both times (best of ``--reps``, same process, alternating)
and their ratio: where the ratio crosses 1 is ``quantize.DEQUANT_ROWS`` on this machine.
"""

from __future__ import annotations

import argparse
import functools
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="24576x4096,4096x12288,6144x1024",
                    help="N x K weights: 8B gate|up, 8B down, 0.6B q|k|v")
    ap.add_argument("--rows", default="64,128,192,256,1024,2048")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import torch

    from smysl.qwen3 import quantize
    from smysl.qwen3.cpu import detect

    print(f"CPU: {detect().describe()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; packed int4 blocks of {quantize._block_rows()} rows\n")
    print("| weight N x K | rows | int4 kernel ms | dequantised + bf16 GEMM ms | ratio |\n"
          "|---|---|---|---|---|")
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        layer = quantize.Int4Linear.from_float(torch.randn(n, k) * 0.02)
        if not quantize.dequantises(n):
            print(f"| {n} x {k} | — | no dequantised regime here (bf16 GEMMs emulated, or "
                  "an unknown packed layout) | | |")
            continue
        for m in (int(r) for r in args.rows.split(",")):
            a = torch.randn(m, k).to(torch.bfloat16)
            calls = {
                "kernel": functools.partial(torch.ops.aten._weight_int4pack_mm_for_cpu, a,
                                            layer.packed, quantize.GROUP, layer.scale_zero),
                "dequant": functools.partial(quantize.dequant_mm, a, layer.packed,
                                             layer.scale_zero, k),
            }
            best = dict.fromkeys(calls, float("inf"))
            for call in calls.values():
                call()  # warm-up: oneDNN builds its kernel per shape
            for _ in range(args.reps):
                for name, call in calls.items():
                    t = time.perf_counter()
                    call()
                    best[name] = min(best[name], time.perf_counter() - t)
            print(f"| {n} x {k} | {m} | {best['kernel'] * 1e3:.1f} | "
                  f"{best['dequant'] * 1e3:.1f} | {best['kernel'] / best['dequant']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
