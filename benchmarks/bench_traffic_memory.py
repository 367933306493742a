"""RSS of a CPU engine fed a server's mixed traffic: does memory stay flat?

    .venv/bin/python benchmarks/bench_traffic_memory.py --batches 1500 --dtype bfloat16
    .venv/bin/python benchmarks/bench_traffic_memory.py --batches 600 --quantize int8

The 0.6B's widths (1,024 hidden, 16/8 heads, ffn 3,072) with ``--layers`` layers and random
weights (built once under ``bench-out/``: memory held per GEMM shape does not depend on the
depth), fed random batches of 1-16 token-id inputs whose lengths are Pareto-distributed (most
under 100 tokens, a few up to 8,000), the same sequence every run (seed 1). Prints RSS every
100 batches. oneDNN keeps a kernel, and its scratch memory, for every GEMM shape and operand
strides it meets: a path that meets a new one per length grows here without end.
The run that builds the checkpoint holds that memory too: measure on a second run.
"""

from __future__ import annotations

import argparse
import random
import time

from common import OUT, SHAPES, random_checkpoint


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=1500)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quantize", choices=["int8", "int4"], default=None)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    name = f"0.6b-widths-{args.layers}-layers"
    SHAPES[name] = dict(SHAPES["0.6b"], num_hidden_layers=args.layers)
    ckpt = random_checkpoint(name, OUT / f"qwen3-{name}-random")

    from smysl import Embedder

    opts = {"quantize": args.quantize} if args.quantize else {"dtype": args.dtype}
    e = Embedder.load(str(ckpt), device="cpu", threads=args.threads, **opts)
    info = e.info()
    print(f"{info.dtype} {info.quantization or ''}, {args.layers} layers; RSS after loading "
          f"{rss_mib():,.0f} MiB")
    rng = random.Random(1)
    t, tokens = time.perf_counter(), 0
    for i in range(args.batches):
        ids = [[rng.randrange(1000, 150000)
                for _ in range(min(8000, int(rng.paretovariate(1.2) * 20)))]
               for _ in range(rng.choice([1, 1, 1, 2, 4, 8, 16]))]
        tokens += sum(map(len, ids))
        e.embed_token_ids(ids)
        if (i + 1) % 100 == 0 or i + 1 == args.batches:
            print(f"{i + 1:>6} batches  {tokens:>9,} tokens  RSS {rss_mib():7,.0f} MiB  "
                  f"{time.perf_counter() - t:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
