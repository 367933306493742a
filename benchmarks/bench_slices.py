"""CPU slice-size sweep: tokens per slice of the per-token work (``Engine.chunk``), per shape and
path, on models with the real layer shapes and fewer layers (random weights).

Usage (from the repo root, after the README's dev install):

    .venv/bin/python benchmarks/bench_slices.py --size 0.6b --layers 4
    .venv/bin/python benchmarks/bench_slices.py --size 8b --layers 2 --paths int8,bfloat16

One forward pass of ~1,000 tokens of short texts (the CPU engine's batch budget) per slice size,
the sizes interleaved round by round so the VM's drift hits them alike; each size's best round
is printed with its ratio to the best size. A row's result does not depend on the slice size
(tested), so the fastest is free to pick.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, SHAPES, random_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="0.6b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (real shape each)")
    ap.add_argument("--paths", default="int8,bfloat16,float32",
                    help="comma-separated: float32, bfloat16, int8, int4")
    ap.add_argument("--slices", default="128,256,512,1024")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per forward pass")
    args = ap.parse_args()

    import torch

    from smysl import Embedder
    from smysl.qwen3.cpu import detect
    from smysl.qwen3.tuning import short_texts

    SHAPES[args.size] = dict(SHAPES[args.size], num_hidden_layers=args.layers)
    ckpt = random_checkpoint(args.size, OUT / f"qwen3-{args.size}-{args.layers}l-random")
    batch = short_texts(random.Random(0), args.tokens)  # the workload smysl tune times
    n_tok = sum(map(len, batch))
    slices = [int(s) for s in args.slices.split(",")]
    print(f"CPU: {detect().describe()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}")
    print(f"{args.size} shape, {args.layers} layers; one pass of {len(batch)} texts, "
          f"{n_tok} tokens")
    for path in args.paths.split(","):
        kw = {"quantize": path} if path in ("int8", "int4") else {"dtype": path}
        engine = Embedder.load(str(ckpt), device="cpu", **kw).engine  # type: ignore[attr-defined]
        engine.forward(batch)  # warm-up: oneDNN builds kernels per new shape
        times: dict[int, list[float]] = {s: [] for s in slices}
        for _ in range(args.rounds):
            for s in slices:
                engine.chunk = s
                t = time.perf_counter()
                engine.forward(batch)
                times[s].append(time.perf_counter() - t)
        best = min(min(v) for v in times.values())
        print(f"{path:9}" + "  ".join(f"{s}: {n_tok / min(v):7.0f} tok/s ({min(v) / best:.2f})"
                                      for s, v in times.items()), flush=True)
        del engine


if __name__ == "__main__":
    main()
