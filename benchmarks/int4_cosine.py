"""``quantize="int4"`` against bf16 on random weights of a real shape, on the CPU: the CPU's int4
layers and the CUDA path's (:class:`~smysl.qwen3.quantize.Int4GemmLinear`, plain torch, run
here on the CPU), each against the bf16 vectors and against each other.

An H200 run gave the 8B shape's int4 on CUDA a min cosine of 0.537 to bf16 (the CPU's 0.6B:
0.906). Whether that is the CUDA layer or the random 8B shape is what this tells apart.

    .venv/bin/python benchmarks/int4_cosine.py --size 0.6b
    .venv/bin/python benchmarks/int4_cosine.py --size 8b    # 16 GB checkpoint, ~5 min

Each mode runs in its own process (the 8B's bf16 weights take 16 GB).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, random_checkpoint

MODES = ("bf16", "int4", "int4-cuda-layer")


def one(ck: Path, mode: str, texts: int, out: Path) -> None:
    """Embed ``texts`` short texts of the bench corpus with one mode -> ``out`` (.npy)."""
    import torch

    if mode == "int4-cuda-layer":  # every layer the CUDA path's class, on this CPU
        from smysl.qwen3 import quantize

        def cuda_layers(gguf: bool, device: torch.device | None = None) -> object:
            return lambda t: quantize.make_cuda(t, torch.device("cpu"), gguf)

        quantize.int4_linear = cuda_layers  # type: ignore[assignment]
    from smysl import Embedder

    t = time.perf_counter()
    m = Embedder.load(str(ck), device="cpu", dtype="bfloat16",
                      **({"quantize": "int4"} if mode != "bf16" else {}))
    load = time.perf_counter() - t
    t = time.perf_counter()
    v = m.embed([x for x in corpus(1.0) if len(x) < 400][:texts])
    print(f"{mode}: load {load:.0f} s, {texts} texts in {time.perf_counter() - t:.1f} s "
          f"(kernel {m.info().kernel})", flush=True)
    np.save(out, v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="0.6b", choices=("0.6b", "4b", "8b"))
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "smysl-bench"))
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode's process
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    ck = random_checkpoint(args.size, Path(args.work) / f"qwen3-{args.size}-random")
    if args.mode:
        one(ck, args.mode, args.texts, Path(args.out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        vecs = {}
        for mode in MODES:
            out = Path(tmp) / f"{mode}.npy"
            subprocess.run([sys.executable, __file__, "--size", args.size, "--texts",
                            str(args.texts), "--work", args.work, "--mode", mode, "--out",
                            str(out)], check=True)
            vecs[mode] = np.load(out)
    print(f"\n| {args.size}, {args.texts} texts | min cosine | mean cosine |\n|---|---|---|")
    for a, b in (("int4", "bf16"), ("int4-cuda-layer", "bf16"), ("int4", "int4-cuda-layer")):
        cos = (vecs[a] * vecs[b]).sum(axis=1)
        print(f"| {a} vs {b} | {cos.min():.6f} | {cos.mean():.6f} |")


if __name__ == "__main__":
    main()
