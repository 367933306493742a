"""CPU benchmark: smysl fp32 / bf16 / int8 / int4 / auto vs sentence-transformers, real 0.6B shape.

Usage (from the repo root, after the README's dev install):

    .venv/bin/python benchmarks/bench_cpu.py --size 0.6b --scale 0.6
    .venv/bin/python benchmarks/bench_cpu.py --systems st,fp32,bf16,int8,auto
    .venv/bin/python benchmarks/bench_cpu.py --memory 2048,4096,8192     # peak RSS per length
    .venv/bin/python benchmarks/bench_cpu.py --isa avx2    # an AVX2-only CPU's code paths
    .venv/bin/python benchmarks/bench_cpu.py --isa avx512_vnni --systems fp32,int4  # Ice Lake
    .venv/bin/python benchmarks/bench_cpu.py --isa sse41 --systems fp32,int8,auto  # pre-AVX
    .venv/bin/python benchmarks/bench_cpu.py --systems fp32/1,fp32,bf16/1,bf16   # 1 lane vs default

Each system runs in its own process (clean peak RSS) on the same random-weight checkpoint and
the same fixed Russian/English corpus; the parent prints them side by side and checks that the
vectors agree. Random weights: speed does not depend on weight values.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, SHAPES, corpus, random_checkpoint


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mib() -> float:
    """Peak RSS since the last :func:`reset_hwm` (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def flops_per_token(size: str, context: float) -> float:
    """Forward FLOPs per token: 2 x linear params + causal attention at a mean context."""
    s = SHAPES[size]
    h, L, hq, hkv, f = (s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"],
                        s["num_key_value_heads"], s["intermediate_size"])
    d = 128
    linear = h * (hq + 2 * hkv) * d + hq * d * h + 3 * h * f
    attn = 2 * 2 * hq * d * context  # QK^T and PV over `context` keys
    return L * (2 * linear + attn)


#: The GEMM kernels a system may multiply with, as ``kernel-dtype`` (what
#: ``ModelInfo.kernel`` and ``.dtype`` report): sentence-transformers runs ``torch-float32``.
KERNELS = ("torch-float32", "onednn-float32", "torch-bfloat16", "onednn-bfloat16",
           "onednn-int8", "fbgemm-int8", "int4-bfloat16")


def matmul_gflops(kind: str = "torch-float32") -> float:
    """This machine's matmul rate on an MLP-shaped GEMM ([1024 tokens, 1024] x [1024, 6144], the
    0.6B shape's gate|up over the CPU engine's batch budget), all threads, for one of
    :data:`KERNELS`:
    ``torch-*`` is ``F.linear`` (float32: MKL), ``onednn-*`` the engine's prepacked layer,
    ``onednn-int8`` / ``fbgemm-int8`` the int8 layers (per-row / per-tensor activations, their
    quantisation included), ``int4-bfloat16`` the 4-bit layer of ``quantize="int4"``. NaN
    where this machine cannot run that kernel."""
    import torch

    from smysl.qwen3.cpu import detect, onednn_int8, packs_linear
    from smysl.qwen3.model import PackedLinear
    from smysl.qwen3.quantize import DynamicInt8Linear, Int4Linear, Int8Linear

    m, k, n = 1024, 1024, 6144
    a, w = torch.randn(m, k), torch.randn(n, k) * 0.02
    lib, _, dtype = kind.partition("-")
    dt = getattr(torch, dtype)
    if kind == "onednn-int8":
        if not onednn_int8():
            return float("nan")
    elif (lib == "onednn" and not packs_linear(dt)) or (
            lib == "torch" and dt == torch.bfloat16 and not detect().native_bf16):
        return float("nan")  # (emulated bf16 GEMMs would take minutes here)
    lin: Callable[[torch.Tensor], torch.Tensor] = {
        "fbgemm": lambda: DynamicInt8Linear(w), "int4": lambda: Int4Linear.from_float(w),
        "onednn": lambda: Int8Linear(w) if dt == torch.int8 else PackedLinear(w.to(dt)),
        "torch": lambda: functools.partial(torch.nn.functional.linear, weight=w.to(dt)),
    }[lib]()
    a_ = a if dt == torch.int8 else a.to(dt)

    def step() -> object:
        return lin(a_)
    for _ in range(3):
        step()
    # the best of 4 windows of ~0.3 s: this VM's speed drifts 10-30%, and a slow window would
    # understate the rate (and overstate every fraction of it)
    best = 0.0
    for _ in range(4):
        reps, t = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - t < 0.3:
            step()
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
    return best


# --------------------------------------------------------------------------- one system
def run_system(system: str, ckpt: Path, texts: list[str], out: Path,
               batch_tokens: int | None, passes: int = 1) -> dict:
    import torch

    t0 = time.perf_counter()
    kernel = "torch-float32"
    system, _, lanes = system.partition("/")  # "bf16/1": one lane (the engine's default else)
    lane_count: int | None = None
    if system == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(ckpt), device="cpu",
                                    model_kwargs={"dtype": torch.float32})

        def embed(x: list[str]) -> np.ndarray:
            return model.encode(x, batch_size=32, normalize_embeddings=True,
                                convert_to_numpy=True)
    else:
        from smysl import Embedder

        dtype = {"fp32": "float32", "int8": "float32", "bf16": "bfloat16",
                 "int4": "bfloat16"}.get(system, "auto")
        emb = Embedder.load(str(ckpt), device="cpu", dtype=dtype,
                            quantize=system if system in ("int8", "int4") else None,
                            max_batch_tokens=batch_tokens, lanes=int(lanes) if lanes else None,
                            threads=torch.get_num_threads())  # as ST: no tuned count

        def embed(x: list[str]) -> np.ndarray:
            return emb.embed(x)
        info = emb.info()
        kernel = info.kernel if info.kernel.endswith("-int8") else f"{info.kernel}-{info.dtype}"
        lane_count = info.lanes
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mib()
    embed(texts[:4])  # warm-up
    secs = float("inf")
    for _ in range(passes):  # the best pass (the first builds oneDNN's kernels per shape)
        t1 = time.perf_counter()
        vecs = embed(texts)
        secs = min(secs, time.perf_counter() - t1)
    np.save(out, vecs)
    return {"system": system, "load_s": load_s, "embed_s": secs, "rss_loaded_mib": rss_loaded,
            "peak_rss_mib": peak_mib(), "threads": torch.get_num_threads(),
            "gemm": kernel, "lanes": lane_count}


def vectors_file(system: str) -> Path:
    """Where a system's child saves its vectors ("bf16/1" -> bf16-1.npy)."""
    return OUT / f"{system.replace('/', '-')}.npy"


def run_memory(ckpt: Path, n_tokens: int) -> dict:
    """Peak RSS of embedding one input of ``n_tokens`` tokens (fp32)."""
    from smysl import Embedder

    emb = Embedder.load(str(ckpt), device="cpu", dtype="float32")
    emb.embed(["warm-up"])
    loaded = rss_mib()
    reset_hwm()
    ids = [[(i * 7919) % 150000 for i in range(n_tokens - 1)]]
    t = time.perf_counter()
    emb.embed_token_ids(ids)  # type: ignore[attr-defined]
    return {"tokens": n_tokens, "rss_loaded_mib": loaded, "peak_rss_mib": peak_mib(),
            "forward_peak_mib": hwm_mib(), "embed_s": time.perf_counter() - t}


# --------------------------------------------------------------------------- parent
#: Environment that caps every library's kernel dispatch at one ISA: ``--isa avx2`` runs the code
#: paths of an AVX2-only CPU (ATen, oneDNN, MKL and fbgemm kernels; smysl reads the oneDNN cap,
#: see ``cpu.apply_isa_cap``) on a newer one. Its memory system and clocks stay this machine's.
ISA_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                     "MKL_ENABLE_INSTRUCTIONS": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"},
            # AVX-512 with VNNI but no BF16 (Cascade Lake, Ice Lake): oneDNN emulates bf16
            "avx512_vnni": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
            # a pre-2013 x86 (SSE4.2, no AVX): torch's baseline kernels. fbgemm has no kernels
            # below AVX2 and cannot be capped there, so its rate is not measured
            "sse41": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                      "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}}
ISA_UNCAPPABLE = {"sse41": {"fbgemm-int8"}}


def child(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="0.6b", choices=sorted(SHAPES))
    ap.add_argument("--scale", type=float, default=0.6, help="corpus size factor (1.0 ~ 20K tok)")
    ap.add_argument("--systems", default="st,fp32,bf16,int8,auto",
                    help="comma list; SYSTEM/N runs smysl with N lanes (default: the engine's)")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help="smysl token budget per forward (default: the engine's)")
    ap.add_argument("--memory", default="", help="comma list of token counts: RSS mode")
    ap.add_argument("--passes", type=int, default=1,
                    help="timed passes over the corpus per smysl system, the best kept "
                         "(sentence-transformers: always one)")
    ap.add_argument("--isa", choices=sorted(ISA_CAPS), default=None,
                    help="emulate a CPU with only this ISA (libraries' dispatch capped)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    caps = ISA_CAPS.get(args.isa or "", {})
    if any(os.environ.get(k) != v for k, v in caps.items()):  # before torch reads them
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]],
                  {**os.environ, **caps})
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = random_checkpoint(args.size, OUT / f"qwen3-{args.size}-random")
    texts = corpus(args.scale)

    if args.child.startswith("mem:"):
        print(json.dumps(run_memory(ckpt, int(args.child[4:]))))
        return
    if args.child:
        print(json.dumps(run_system(args.child, ckpt, texts, vectors_file(args.child),
                                    args.batch_tokens,
                                    1 if args.child == "st" else args.passes)))
        return

    import torch
    from tokenizers import Tokenizer

    from smysl.qwen3.cpu import auto_dtype, detect

    cpu = detect()
    if caps:
        print("emulated ISA: " + " ".join(f"{k}={v}" for k, v in caps.items()))
    print(f"machine: {cpu.describe()}; {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"(kernels: {torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} "
          f"threads; model {args.size} (random weights)")
    chosen, why = auto_dtype(cpu, torch.bfloat16)
    print(f"dtype auto here (bf16 checkpoint): {str(chosen).removeprefix('torch.')}, because "
          f"{why}")
    if args.memory:
        weights = sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) * 2 / 2**20  # fp32
        print(f"fp32 weights: {weights:.0f} MiB")
        print("tokens  loaded_rss_MiB  process_peak_MiB  peak_over_weights_MiB  "
              "forward_extra_MiB  embed_s")
        for n in [int(x) for x in args.memory.split(",")]:
            r = child(["--size", args.size, "--child", f"mem:{n}"])
            print(f"{n:6d}  {r['rss_loaded_mib']:14.0f}  {r['peak_rss_mib']:16.0f}  "
                  f"{r['peak_rss_mib'] - weights:21.0f}  "
                  f"{r['forward_peak_mib'] - r['rss_loaded_mib']:17.0f}  {r['embed_s']:7.1f}")
        return

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    n_tok = sum(lengths)
    ctx = sum(n * n / 2 for n in lengths) / n_tok  # mean causal context per token
    gemm = {d: matmul_gflops(d) for d in KERNELS
            if d not in ISA_UNCAPPABLE.get(args.isa or "", ())}
    print(f"corpus: {len(texts)} texts, {n_tok} tokens (min {min(lengths)}, max {max(lengths)})")
    print(f"timing: best of {args.passes} pass(es) per smysl system, one for ST; GEMM rate "
          "best of 4 windows")
    print("GEMM rate, [1024,1024]x[1024,6144]: " +
          ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in gemm.items()))
    results = {}
    for system in args.systems.split(","):
        budget = ["--batch-tokens", str(args.batch_tokens)] if args.batch_tokens else []
        results[system] = r = child(["--size", args.size, "--scale", str(args.scale), *budget,
                                     "--passes", str(args.passes), "--child", system])
        r["tok_s"] = n_tok / r["embed_s"]
        r["texts_s"] = len(texts) / r["embed_s"]
        # the fraction of the GEMM rate of the kernel the path multiplies with (ST: torch fp32)
        r["matmul_frac"] = (r["tok_s"] * flops_per_token(args.size, ctx) / 1e9
                            / gemm.get(r["gemm"], float("nan")))
    vec = {s: np.load(vectors_file(s)) for s in results}
    ref = vec.get("fp32", vec.get("st"))
    print(f"{'system':8} {'gemm':>15} {'lanes':>5} {'tokens/s':>9} {'texts/s':>8} {'embed_s':>8} "
          f"{'load_s':>7} {'peak_RSS_MiB':>12} {'of_gemm_rate':>12} {'x_st':>5} {'x_fp32':>6} "
          f"{'min_cos_fp32':>12}")
    for s, r in results.items():
        x_st = r["tok_s"] / results["st"]["tok_s"] if "st" in results else float("nan")
        x_fp = r["tok_s"] / results["fp32"]["tok_s"] if "fp32" in results else float("nan")
        cos = float((vec[s] * ref).sum(1).min()) if ref is not None else float("nan")
        print(f"{s:8} {r['gemm']:>15} {r['lanes'] or '-':>5} {r['tok_s']:9.1f} {r['texts_s']:8.2f} "
              f"{r['embed_s']:8.1f} {r['load_s']:7.1f} {r['peak_rss_mib']:12.0f} "
              f"{r['matmul_frac']:12.0%} {x_st:5.2f} {x_fp:6.2f} {cos:12.6f}")
    if "st" in vec and "fp32" in vec:
        print(f"max |fp32 - st| = {np.abs(vec['fp32'] - vec['st']).max():.2e}")


if __name__ == "__main__":
    main()
