"""Peak memory of loading a model and embedding one long input, each case in a fresh process.

    .venv/bin/python benchmarks/bench_memory.py --shape 8b --tokens 2048 --case int8
    .venv/bin/python benchmarks/bench_memory.py --model x.gguf --case auto --case int8

A case is ``dtype`` (``auto``, ``float32``, ``bfloat16``), ``int8`` or ``int4`` (``quantize``).
Random real-shape bf16 checkpoints are built once under --work (``--shape``), or ``--model``
names any local checkpoint or GGUF file. Peak RSS is the process's ``ru_maxrss``: after
``Embedder.load``, then after embedding one input of ``--tokens`` tokens (token ids, so the
length is exact); the file size of the weights is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import peak_mib


def child(model: str, case: str, tokens: int, threads: int) -> None:
    import numpy as np

    from smysl import Embedder

    opts = {"quantize": case} if case in ("int8", "int4") else {"dtype": case}
    t0 = time.perf_counter()
    e = Embedder.load(model, device="cpu", threads=threads, **opts)
    load_s, load_peak = time.perf_counter() - t0, peak_mib()
    ids = [[(i * 7919) % 150000 for i in range(tokens - 1)]]
    t0 = time.perf_counter()
    v = e.embed_token_ids(ids)
    secs = time.perf_counter() - t0
    print(json.dumps({"case": case, "dtype": e.info().dtype, "quantization": e.info().quantization,
                      "load_s": load_s, "load_peak_mib": load_peak, "embed_s": secs,
                      "tok_s": tokens / secs, "peak_mib": peak_mib(),
                      "finite": bool(np.isfinite(v).all())}))


def main() -> None:
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", choices=["0.6b", "4b", "8b"])
    src.add_argument("--model")
    ap.add_argument("--gguf", choices=["Q4_K_M", "Q8_0"],
                    help="with --shape: a random GGUF file of that type instead")
    ap.add_argument("--work", default="/tmp/smysl-bench")
    ap.add_argument("--case", action="append", default=[])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.case[0], args.tokens, args.threads)
        return
    model = args.model
    if args.shape and args.gguf:
        from common import random_gguf_checkpoint

        model = str(random_gguf_checkpoint(
            args.shape, Path(args.work) / f"qwen3-{args.shape}-random-{args.gguf}.gguf",
            args.gguf))
    elif args.shape:
        from common import random_checkpoint

        model = str(random_checkpoint(args.shape, Path(args.work) / f"qwen3-{args.shape}-random"))
    path = Path(model)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"model {model}: weights {size:,.0f} MiB; one input of {args.tokens} tokens, "
          f"{args.threads} threads\n")
    print("| case | dtype | peak RSS after load MiB | peak RSS with the input MiB | load s | "
          "tokens/s | finite |\n|---|---|---|---|---|---|---|")
    for case in args.case or ["auto"]:
        r = subprocess.run([sys.executable, __file__, "--model", model, "--case", case,
                            "--tokens", str(args.tokens), "--threads", str(args.threads),
                            "--child"], capture_output=True, text=True)
        if r.returncode:
            print(f"| {case} | failed (exit {r.returncode}): {r.stderr.strip()[-300:]} |")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        q = f" {d['quantization']}" if d["quantization"] else ""
        print(f"| {case} | {d['dtype']}{q} | {d['load_peak_mib']:,.0f} | {d['peak_mib']:,.0f} | "
              f"{d['load_s']:.1f} | {d['tok_s']:.1f} | {d['finite']} |", flush=True)


if __name__ == "__main__":
    main()
