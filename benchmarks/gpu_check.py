"""One-shot CUDA check for issue 12 (one H100/H200, under 8 minutes): every number in one run.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --scale 4 [--out DIR] [--budget 420]

Sections, in order of importance (each prints a Markdown table as it finishes; a section that
fails prints its traceback and the run goes on; sections that would start after ``--budget``
seconds are skipped and say so, and so are a section's optional steps (eager passes, int4,
profiles, server variants after the first; not the 8B's 32K input nor the default server, which
measure bars) that would start after ``--deadline``; gpu.json is
rewritten after every section and step, and on SIGTERM, so a run cut off by ``timeout`` keeps
what it measured):

1. ``pytest`` of tests/qwen3/test_gpu.py (parity, varlen kernels, graphs vs eager, fused
   kernels vs eager, ...) and tests/qwen3/test_kernels.py (the Triton kernels, bf16 and fp16).
2. Parity on the real 0.6B shape (random weights): smysl fp32/bf16/fp16 on CUDA vs the
   transformers recipe in fp32 (TF32 off; left padding, official last-token pool).
3. Per shape (0.6B, 8B, 4B): the GEMM-only ceiling (the layers' linear maps on 16,384 tokens),
   sentence-transformers bf16 at batch sizes 32 and 128 (one pass each, first pass after load),
   smysl bf16 first pass (16 texts of warm-up only) and warm pass, single-query latency
   p50/p95 in-process (graphs replayed), the same with the fused Triton kernels off
   (``cuda_kernels=False``), and for 8B one 32,768-token input in bf16 and fp16.
4. ``smysl serve`` on loopback (0.6B; the default ``--workers auto``, 8 on a 16-CPU host,
   before the 8B; after it, 12 and 4 HTTP workers and one process, and then the 4B):
   single-query latency, 64
   concurrent single-text clients (in 4 processes) against the offline throughput of the same
   texts, where their time went (the server's /metrics: its own time, the wait for a batch,
   the engine round trip, requests per batch), and the same texts in a few large requests
   sent at once (each several server batches, queued back to back).

Setup on the device machine (no internet): ``benchmarks/device_wheels.sh`` here fills
``.whl/`` with the server extra's wheels for its Python 3.12 (uvloop and httptools included);
carry ``.whl`` and a copy of ``../shared`` as ``shared``, install with
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` and run with
``PYTHONPATH=$PWD:/tmp/site``.

Writes ``gpu.json`` to --out.

``--dry-run`` runs every section on the CPU with tiny shapes (2 layers, 64 wide) and a smaller
corpus: no GPU and no number that means anything, only the script's own plumbing (about six
minutes on two cores; ``pytest -m slow tests/test_gpu_check.py`` runs it). Run it after changing
this script: the GPU run is one call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHAPES, corpus, random_checkpoint
from server_cpu import busiest, tree_cpu

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
QUERY = "как устроен семантический поиск?"
#: Where everything runs: "cuda", or "cpu" for ``--dry-run``.
DEV = "cuda"
#: The shape every size takes in ``--dry-run``.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=151669, max_position_embeddings=40960)
#: Short texts the server section sends (fewer in ``--dry-run``).
SHORT_TEXTS = 1500
T0 = time.perf_counter()
RES: dict[str, Any] = {}
#: Seconds after which no optional step starts (``--deadline``).
DEADLINE = float("inf")
#: Where gpu.json goes (``--out``).
OUT = Path("gpu-out")


def log(msg: str) -> None:
    print(msg, flush=True)


def elapsed() -> float:
    return time.perf_counter() - T0


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """Peak GPU memory since :func:`reset_peak` (0 in a dry run)."""
    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0


def allocated_gib() -> float:
    return torch.cuda.memory_allocated() / 2**30 if DEV == "cuda" else 0.0


def timed(fn: Callable[..., Any], *a: Any, **k: Any) -> tuple[Any, float]:
    sync()
    t = time.perf_counter()
    r = fn(*a, **k)
    sync()
    return r, time.perf_counter() - t


def save() -> None:
    """gpu.json as measured so far (after each section and step: a run cut off keeps it)."""
    RES["elapsed_s"] = elapsed()
    tmp = OUT / "gpu.json.tmp"  # then renamed: a reader (or a kill mid-write) never sees half
    tmp.write_text(json.dumps(RES, indent=2))
    os.replace(tmp, OUT / "gpu.json")


def section(name: str, budget: float, fn: Callable[[], None]) -> None:
    """One section of the run: skipped when it would start after ``budget`` seconds."""
    attempt(name, fn, budget, "budget")


def step(name: str, fn: Callable[[], None], *, bar: bool = False) -> None:
    """A part of a section: skipped after :data:`DEADLINE` unless it measures a ``bar`` of the
    issue."""
    attempt(name, fn, float("inf") if bar else DEADLINE, "deadline")


def attempt(name: str, fn: Callable[[], None], limit: float, what: str) -> None:
    """Run ``fn`` unless ``limit`` seconds have passed (``what`` says which limit); a failure
    is logged and the run goes on; gpu.json is saved either way."""
    if elapsed() > limit:
        log(f"\n(skipped {name}: {elapsed():.0f} s elapsed, {what} {limit:.0f} s)")
        RES.setdefault("skipped", []).append(name)
        save()
        return
    t = time.perf_counter()
    try:
        fn()
    except Exception:
        log(f"\n!! {name} failed:\n{traceback.format_exc()}")
        RES.setdefault("failed", []).append(name)
    log(f"({name}: {time.perf_counter() - t:.0f} s; {elapsed():.0f} s so far)")
    free()
    save()


def free() -> None:
    import gc

    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- 1. tests
def gpu_tests(out: Path) -> None:
    """The GPU tests, their output written to pytest-gpu.txt as they run (a run cut off keeps
    it). The Hopper compile test is left out: it needs no GPU and runs in every CI."""
    path = out / "pytest-gpu.txt"
    with path.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu or not slow", "-p",
                            "no:cacheprovider", "-k", "not compile_for_a_hopper",
                            "tests/qwen3/test_gpu.py", "tests/qwen3/test_kernels.py"], cwd=ROOT,
                           stdout=f, stderr=subprocess.STDOUT, timeout=300)
    text = path.read_text(errors="replace")
    tail = text[-6000:]
    RES["pytest_gpu"] = {"rc": r.returncode, "tail": tail.splitlines()[-1:]}
    log("\n## pytest -m gpu\n\n```\n" + tail + "\n```")


# --------------------------------------------------------------------------- 2. parity
def reference(ck: Path, texts: list[str]) -> np.ndarray:
    """transformers fp32, left padding, official last-token pool, F.normalize."""
    import torch.nn.functional as F
    from transformers import AutoTokenizer, Qwen3Model

    model = Qwen3Model.from_pretrained(str(ck), dtype=torch.float32).to(DEV).eval()
    tok = AutoTokenizer.from_pretrained(str(ck), padding_side="left")
    out = []
    for i in range(0, len(texts), 8):
        batch = tok(texts[i : i + 8], padding=True, return_tensors="pt").to(DEV)
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        out.append(F.normalize(h[:, -1].float(), dim=1).cpu().numpy())  # left padded
    del model
    free()
    return np.concatenate(out)


def parity(ck: Path, texts: list[str]) -> None:
    from smysl import Embedder

    ref = reference(ck, texts)
    rows = {}
    log("\n## Parity, 0.6B shape (random weights), vs transformers fp32, 48 texts\n")
    log("| smysl dtype | max abs diff | min cosine | finite |\n|---|---|---|---|")
    for dtype in ("float32", "bfloat16", "float16"):
        e = Embedder.load(str(ck), device=DEV, dtype=dtype)
        v = e.embed(texts)
        rows[dtype] = {"max_abs": float(np.abs(v - ref).max()),
                       "min_cos": float((v * ref).sum(1).min()),
                       "finite": bool(np.isfinite(v).all())}
        p = rows[dtype]
        log(f"| {dtype} | {p['max_abs']:.2e} | {p['min_cos']:.6f} | {p['finite']} |")
        del e
        free()
    RES["parity_0.6b"] = rows


# --------------------------------------------------------------------------- 3. per shape
def gemm_ceiling(size: str, tokens: int = 16384) -> float:
    """tokens/s of the layers' linear maps alone (bf16, no attention, no elementwise)."""
    s = SHAPES[size]
    h, f, L = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    hq, hkv = s["num_attention_heads"], s["num_key_value_heads"]
    d = 128
    shapes = [((hq + 2 * hkv) * d, h), (h, hq * d), (2 * f, h), (h, f)]
    ws = [torch.randn(o, i, device=DEV, dtype=torch.bfloat16) * 0.02 for o, i in shapes]
    xs = [torch.randn(tokens, i, device=DEV, dtype=torch.bfloat16) for _, i in shapes]

    def one(n: int) -> None:
        for _ in range(n * L):
            for w, x in zip(ws, xs, strict=True):
                torch.nn.functional.linear(x, w)

    one(1)
    _, secs = timed(one, 3)
    ws.clear()
    xs.clear()
    free()
    return tokens * 3 / secs


def st_pass(ck: Path, texts: list[str], bs: int) -> tuple[float, float]:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(ck), device=DEV, model_kwargs={"dtype": torch.bfloat16})
    reset_peak()
    _, secs = timed(st.encode, texts, batch_size=bs, normalize_embeddings=True)
    peak = peak_gib()
    del st
    free()
    return secs, peak


def latency(fn: Callable[[], Any], n: int = 100) -> tuple[float, float]:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(n):
        _, s = timed(fn)
        ts.append(s * 1000)
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 95))


def shape_run(size: str, work: Path, texts: list[str], n_tok: int, long_input: bool) -> None:
    from smysl import Embedder

    t = time.perf_counter()
    ck = random_checkpoint(size, work / f"qwen3-{size}-random", device=DEV)
    log(f"\n### {size}: checkpoint ready in {time.perf_counter() - t:.0f} s")
    row: dict[str, Any] = {"gemm_ceiling_tok_s": gemm_ceiling(size)}
    RES[f"shape_{size}"] = row  # filled in as it goes: a later failure keeps what ran
    for bs in (32, 128):
        secs, peak = st_pass(ck, texts, bs)
        row[f"st_bs{bs}"] = {"tok_s": n_tok / secs, "secs": secs, "peak_gib": peak}
    t = time.perf_counter()
    m = Embedder.load(str(ck), device=DEV, dtype="bfloat16")
    row["load_s"] = time.perf_counter() - t
    row["cuda_graphs"] = m.info().cuda_graphs
    m.embed(texts[:16])
    reset_peak()
    first, s1 = timed(m.embed, texts)
    peak = peak_gib()
    _, s2 = timed(m.embed, texts)
    row["smysl_first"] = {"tok_s": n_tok / s1, "secs": s1, "peak_gib": peak}
    row["smysl_warm"] = {"tok_s": n_tok / s2, "secs": s2}
    row["query_ms"] = latency(functools.partial(m.embed, [QUERY]))
    row["finite"] = bool(np.isfinite(first).all())
    row["kernel"] = m.info().kernel
    if DEV == "cuda" and "triton" not in row["kernel"]:
        log(f"!! {size}: the fused Triton kernels are off ({row['kernel']}): see the engine's "
            f"warning above; every fused-vs-eager number of this run compares eager with eager")
    best_st = max(row["st_bs32"]["tok_s"], row["st_bs128"]["tok_s"])
    log(f"\n## {size} shape, bf16, {len(texts)} texts / {n_tok} tokens "
        f"(load {row['load_s']:.1f} s, graphs {row['cuda_graphs']})\n")
    log("| system | tokens/s | seconds | peak GiB |\n|---|---|---|---|")
    log(f"| GEMM-only ceiling (linears, 16,384 tokens) | {row['gemm_ceiling_tok_s']:,.0f} | | |")
    for bs in (32, 128):
        r = row[f"st_bs{bs}"]
        log(f"| sentence-transformers bs {bs} | {r['tok_s']:,.0f} | {r['secs']:.2f} | "
            f"{r['peak_gib']:.1f} |")
    log(f"| smysl first pass ({row['kernel']}) | {n_tok / s1:,.0f} | {s1:.2f} | {peak:.1f} |")
    log(f"| smysl warm | {n_tok / s2:,.0f} | {s2:.2f} | |")
    log(f"\nsmysl first / best ST: {n_tok / s1 / best_st:.2f}x; first / warm: {s2 / s1:.2f}; "
        f"first / GEMM ceiling: {n_tok / s1 / row['gemm_ceiling_tok_s']:.2f}; single query "
        f"p50 {row['query_ms'][0]:.2f} ms, p95 {row['query_ms'][1]:.2f} ms; finite "
        f"{row['finite']}")
    save()
    if size == "0.6b":
        whole = functools.partial(m.embed, texts)
        step(f"{size} profile", lambda: row.update(profile=profile(whole)))
        del whole
    del m
    free()
    if long_input:  # a bar (memory, finite); the eager and int4 steps are not
        step(f"{size} 32K input", lambda: long32k(ck, row), bar=True)
    step(f"{size} eager passes", lambda: eager_passes(ck, texts, n_tok, first, row))
    if long_input:
        step(f"{size} int4", lambda: int4(ck, texts, n_tok, first, row))


def eager_passes(ck: Path, texts: list[str], n_tok: int, fused: np.ndarray,
                 row: dict[str, Any]) -> None:
    """The same passes without the fused Triton kernels (after them: cuBLAS has seen these
    shapes, so the eager first pass has the advantage)."""
    from smysl import Embedder

    e = Embedder.load(str(ck), device=DEV, dtype="bfloat16", cuda_kernels=False)
    e.embed(texts[:16])
    eager, e1 = timed(e.embed, texts)
    _, e2 = timed(e.embed, texts)
    row["eager_first"] = {"tok_s": n_tok / e1, "secs": e1}
    row["eager_warm"] = {"tok_s": n_tok / e2, "secs": e2}
    row["eager_query_ms"] = latency(functools.partial(e.embed, [QUERY]))
    row["fused_vs_eager_min_cos"] = float((fused * eager).sum(axis=1).min())
    del e
    free()
    q = row["eager_query_ms"]
    log("\n| smysl eager (cuda_kernels=False) | tokens/s | seconds | query p50 / p95 ms |\n"
        "|---|---|---|---|\n"
        f"| first pass | {n_tok / e1:,.0f} | {e1:.2f} | {q[0]:.2f} / {q[1]:.2f} |\n"
        f"| warm | {n_tok / e2:,.0f} | {e2:.2f} | |\n\n"
        f"fused vs eager min cosine {row['fused_vs_eager_min_cos']:.6f}")


@contextlib.contextmanager
def ramp(on: bool) -> Iterator[None]:
    """Bulk calls with the blocks' ramp (the code's ``RAMP_BLOCKS``) or without it (blocks of
    a whole batch, as before the fifteenth session)."""
    from smysl.qwen3 import embedder

    blocks = embedder.RAMP_BLOCKS
    embedder.RAMP_BLOCKS = blocks if on else 0
    try:
        yield
    finally:
        embedder.RAMP_BLOCKS = blocks


#: The fresh processes of :func:`first_pass_causes`: (name, the load's sweep of matrix
#: products on, profiled).
FRESH_RUNS = (("as shipped", True, False), ("without the load's sweep", False, False),
              ("without the sweep, profiled", False, True))


#: CUDA calls that wait for the device (:func:`api_calls`).
WAITS = ("Synchronize", "EventQuery", "StreamQuery", "Memcpy")


def api_calls(p: Any) -> dict[str, Any]:
    """The CUDA runtime and driver calls of a profiled pass: per name, calls and ms, and the
    calls over 0.5 ms (a kernel's first launch loads it; a full launch queue also blocks),
    and those long calls by the op that made them. Waits for the device (synchronize, event
    queries, copies to the host) are long by nature: counted, never "long"."""
    names: dict[str, list[float]] = {}
    by_op: dict[str, list[float]] = {}
    for e in p.events():
        if e.device_type.name != "CPU" or not e.name.startswith("cu"):
            continue
        ms = e.time_range.elapsed_us() / 1e3
        r = names.setdefault(e.name, [0, 0.0, 0, 0.0])
        r[0] += 1
        r[1] += ms
        if ms > 0.5 and not any(w in e.name for w in WAITS):
            r[2] += 1
            r[3] += ms
            op = e.cpu_parent.name if e.cpu_parent is not None else "(none)"
            o = by_op.setdefault(op[:60], [0, 0.0])
            o[0] += 1
            o[1] += ms
    top = sorted(names.items(), key=lambda kv: -kv[1][1])[:8]
    return {"calls": {k: {"n": v[0], "ms": round(v[1], 2), "long_n": v[2],
                          "long_ms": round(v[3], 2)} for k, v in top},
            "long_by_op": {k: {"n": v[0], "ms": round(v[1], 2)}
                           for k, v in sorted(by_op.items(), key=lambda kv: -kv[1][1])[:8]}}


def _fresh_pass(ck: str, texts: list[str], dev: str, sweep: bool, profiled: bool,
                out: Any) -> None:
    """One fresh process: load the 0.6B (bf16), embed 16 texts, then time a first and a
    second pass over ``texts`` (each profiled with ``profiled``) -> ``out``."""
    from torch.profiler import ProfilerActivity, profile

    global DEV
    DEV = dev
    cuda_log = logging.getLogger("smysl.qwen3.cuda")  # the load's warm-up, with its times
    cuda_log.setLevel(logging.INFO)
    cuda_log.addHandler(logging.StreamHandler(sys.stdout))
    from smysl.qwen3 import cuda

    if not sweep:
        cuda.SWEEP_STEPS = 0
    from smysl import Embedder

    t = time.perf_counter()
    m = Embedder.load(ck, device=dev, dtype="bfloat16")
    res: dict[str, Any] = {"load_s": time.perf_counter() - t}
    m.embed(texts[:16])
    for name in ("first", "warm"):
        if profiled:
            acts = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if dev == "cuda" else [])]
            with profile(activities=acts) as p:
                _, res[f"{name}_s"] = timed(m.embed, texts)
            res[f"{name}_api"] = api_calls(p)
        else:
            _, res[f"{name}_s"] = timed(m.embed, texts)
    out.put(res)


def first_pass_causes(ck: Path, texts: list[str], row: dict[str, Any]) -> None:
    """Why a first pass is slower than the next (0.82 of warm on the 0.6B, bar 0.9), each in
    a fresh process (what a first pass meets first is the process's: a second model in the
    same process was as fast as a warm pass): as shipped, without the load's sweep of matrix
    products (``cuda.SWEEP_STEPS`` 0: the eager passes of the warm-up only), and that again
    under the profiler, whose CUDA calls over 0.5 ms, first pass against warm, show what the
    first one waited for (kernels loaded at their first launch, pinned or device memory)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    runs: dict[str, Any] = {}
    row["first_pass_causes"] = runs
    log("\n| fresh process, 0.6B | load s | first pass s | warm s | first / warm |\n"
        "|---|---|---|---|---|")
    for name, sweep, profiled in FRESH_RUNS:
        if elapsed() > DEADLINE:
            RES.setdefault("skipped", []).append(f"first-pass causes: {name}")
            log(f"-- skipped (deadline): fresh process {name!r}")
            break
        out = ctx.Queue()
        proc = ctx.Process(target=_fresh_pass,
                           args=(str(ck), texts, DEV, sweep, profiled, out))
        proc.start()
        deadline = time.monotonic() + 120  # import, load, three passes: ~15 s on an H200
        try:
            while True:  # a process that died fails the step at once
                try:
                    r = out.get(timeout=1)
                    break
                except queue.Empty:
                    if proc.exitcode is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"fresh process {name!r} failed (exit code "
                                           f"{proc.exitcode})") from None
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        runs[name] = r
        log(f"| {name} | {r['load_s']:.2f} | {r['first_s']:.3f} | {r['warm_s']:.3f} | "
            f"{r['warm_s'] / r['first_s']:.2f} |")
        save()
    for name, r in runs.items():
        if "first_api" not in r:
            continue
        for which in ("first", "warm"):
            api = r[f"{which}_api"]
            log(f"\n{name}, {which} pass: CUDA calls (calls, ms; over 0.5 ms: calls, ms): " + (
                "; ".join(f"{k} {v['n']}, {v['ms']:.1f}; {v['long_n']}, {v['long_ms']:.1f}"
                          for k, v in api["calls"].items()) or "none"))
            log(f"{name}, {which} pass: calls over 0.5 ms by op: " + (
                "; ".join(f"{k} {v['n']}, {v['ms']:.1f} ms"
                          for k, v in api["long_by_op"].items()) or "none"))


def int4(ck: Path, texts: list[str], n_tok: int, bf16: np.ndarray, row: dict[str, Any]
         ) -> None:
    """Issue 14 on the GPU: ``quantize="int4"`` (4-bit planes rebuilt per call for cuBLAS)
    within 8 GiB of VRAM, its speed and its cosine to the bf16 vectors."""
    from smysl import Embedder

    reset_peak()
    t = time.perf_counter()
    e = Embedder.load(str(ck), device=DEV, quantize="int4")
    load_s, weights = time.perf_counter() - t, allocated_gib()
    load_peak = peak_gib()
    e.embed(texts[:16])
    reset_peak()
    v, secs = timed(e.embed, texts)
    peak = max(load_peak, peak_gib())
    _, warm = timed(e.embed, texts)
    # int4 rebuilds its weights on every pass: the blocks' ramp (3 passes more) costs it more
    # than it costs bf16; the same warm call without it
    with ramp(False):
        _, warm_no_ramp = timed(e.embed, texts)
    query = latency(functools.partial(e.embed, [QUERY]), n=30)
    cos = (v * bf16).sum(axis=1)
    row["int4"] = {"load_s": load_s, "weights_gib": weights, "peak_gib": peak,
                   "first_tok_s": n_tok / secs, "warm_tok_s": n_tok / warm,
                   "warm_no_ramp_tok_s": n_tok / warm_no_ramp,
                   "query_ms": query,
                   "min_cos_bf16": float(cos.min()), "finite": bool(np.isfinite(v).all())}
    r = row["int4"]
    log(f"\n| int4 on CUDA | weights GiB | peak GiB (load, pass) | first tok/s | warm tok/s | "
        f"warm, no ramp | query p50 ms | min cos to bf16 | finite |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| quantize=int4 (load {load_s:.0f} s) | {weights:.2f} | {peak:.2f} | "
        f"{r['first_tok_s']:,.0f} | {r['warm_tok_s']:,.0f} | {r['warm_no_ramp_tok_s']:,.0f} | "
        f"{r['query_ms'][0]:.1f} | "
        f"{r['min_cos_bf16']:.5f} | {r['finite']} |")
    del e
    free()


def profile(fn: Callable[[], Any]) -> dict[str, Any]:
    """Kernel launches and GPU-busy time of one warm pass, and the top kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if DEV == "cuda" else [])]
    with prof(activities=activities) as p:
        _, wall = timed(fn)
    kernels = [e for e in p.events() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time for e in kernels) / 1e6  # device_time: microseconds
    top = sorted(p.key_averages(), key=lambda a: -a.device_time_total)
    rows = [(a.key[:70], a.count, a.device_time_total / 1e3) for a in top
            if a.device_time_total > 0 and not a.key.startswith(("aten::", "cuda", "Memcpy"))][:12]
    log(f"\nprofile of one warm pass (profiler on: {wall:.2f} s): {len(kernels)} GPU events, "
        f"busy {busy:.3f} s\n\n| kernel | calls | ms |\n|---|---|---|")
    for k, c, ms in rows:
        log(f"| {k} | {c} | {ms:.1f} |")
    return {"wall_s": wall, "gpu_events": len(kernels), "busy_s": busy, "top": rows}


def long32k(ck: Path, row: dict[str, Any]) -> None:
    from smysl import Embedder

    ids = [[(i * 7919) % 150000 for i in range(32767)]]
    log("\n| 32,768 tokens, 8B | seconds | peak GiB | weights GiB | finite |\n"
        "|---|---|---|---|---|")
    for dtype in ("bfloat16", "float16"):
        e = Embedder.load(str(ck), device=DEV, dtype=dtype)
        weights = allocated_gib()
        reset_peak()
        v, secs = timed(e.embed_token_ids, ids)
        peak = peak_gib()
        ok = bool(np.isfinite(v).all())
        row[f"long32k_{dtype}"] = {"secs": secs, "peak_gib": peak, "weights_gib": weights,
                                   "finite": ok}
        log(f"| {dtype} | {secs:.2f} | {peak:.1f} | {weights:.1f} | {ok} |")
        del e
        free()


# --------------------------------------------------------------------------- 4. server
#: Client processes of the 64-client load (one asyncio process of Python HTTP clients tops out
#: near the server's own rate, and would measure itself).
CLIENT_PROCS = 4


def _client_proc(url: str, texts: list[str], ids: list[int], conns: int, ref: np.ndarray,
                 start: Any, out: Any) -> None:
    """One load process: ``conns`` closed-loop clients (a keep-alive connection each) share
    ``ids``, one text per TEI /embed request, once every load process has passed the barrier
    ``start`` (imports done)."""
    import orjson
    from load_test import Conn

    host, port = url.removeprefix("http://").rsplit(":", 1)
    todo = ids[::-1]
    lat: list[float] = []
    cos: list[float] = []

    async def client() -> None:
        conn = Conn(host, int(port))
        while todo:
            i = todo.pop()
            t = time.perf_counter()
            status, _, payload = await conn.post("/embed", {"inputs": [texts[i]]})
            lat.append(time.perf_counter() - t)
            assert status == 200, payload[:200]
            cos.append(float(np.dot(np.asarray(orjson.loads(payload)[0], np.float32), ref[i])))
        await conn.close()

    async def run() -> tuple[float, float]:
        t0 = time.time()
        await asyncio.gather(*[client() for _ in range(conns)])
        return t0, time.time()

    start.wait(60)
    c0 = time.process_time()
    t0, t1 = asyncio.run(run())
    # this process's share of a core: near 1.0, the clients and not the server set the rate
    out.put((t0, t1, lat, min(cos), (time.process_time() - c0) / max(t1 - t0, 1e-9)))


class Load(NamedTuple):
    """What :func:`_clients` measured."""

    wall: float  # seconds from the first load process's start to the last one's end
    latencies: list[float]  # seconds per request
    min_cos: float  # the least cosine of an answer to its ``ref`` row
    client_cpu: list[float]  # each load process's share of a core while it ran


def _clients(url: str, texts: list[str], clients: int, ref: np.ndarray, rounds: int = 1
             ) -> Load:
    """``clients`` single-text clients in :data:`CLIENT_PROCS` processes, each text sent
    ``rounds`` times."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    # all start together once each has imported this script (seconds, and not alike): a
    # late starter would stretch the wall time from the first start to the last end
    start = ctx.Barrier(CLIENT_PROCS)
    procs = [ctx.Process(target=_client_proc, args=(
        url, texts, list(range(k, len(texts), CLIENT_PROCS)) * rounds, clients // CLIENT_PROCS,
        ref, start, out)) for k in range(CLIENT_PROCS)]
    for p in procs:
        p.start()
    parts: list[Any] = []
    deadline = time.monotonic() + 300
    while len(parts) < len(procs):  # a load process that died fails the measure at once
        try:
            parts.append(out.get(timeout=1))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.terminate()
                raise RuntimeError(f"load processes failed (exit codes {dead}) or timed "
                                   "out") from None
    for p in procs:
        p.join(30)
    wall = max(p[1] for p in parts) - min(p[0] for p in parts)
    return Load(wall, [x for p in parts for x in p[2]], min(p[3] for p in parts),
                sorted((p[4] for p in parts), reverse=True))


def scrape(url: str) -> dict[str, float]:
    """The server's /metrics: each sample's value summed over its labels, by name (empty when
    it cannot be read: the measure around it must not be lost)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            text = r.read().decode()
    except (OSError, ValueError) as e:
        log(f"!! /metrics not read: {type(e).__name__}: {e}")
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            with contextlib.suppress(ValueError, IndexError):  # not a sample line
                name, value = line.split("{")[0].split()[0], line.rsplit(" ", 1)[1]
                out[name] = out.get(name, 0.0) + float(value)
    return out


def latency_parts(before: dict[str, float], after: dict[str, float], lat: list[float]
                  ) -> dict[str, float]:
    """Where a request's time went under load, from two scrapes around it (means, ms): the
    client's whole wait, the server's time for it (edge middleware in to response out), its
    wait for a batch, the backend's time per batch, and requests per batch. A client's wait
    past the server's time was spent before the server read the request (a busy event loop)
    or in the clients; empty when the server has no such metrics."""
    if not before or not after:  # a scrape failed: totals since start would mislead
        return {}

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    counts = {k: delta(f"smysl_{k}_count") for k in ("request_seconds", "queue_seconds",
                                                     "compute_seconds", "batch_requests")}
    if not all(counts.values()):
        return {}
    mean = {k: delta(f"smysl_{k}_sum") / n for k, n in counts.items()}
    return {"client_ms": float(np.mean(lat)) * 1e3, "server_ms": mean["request_seconds"] * 1e3,
            "queue_ms": mean["queue_seconds"] * 1e3, "compute_ms": mean["compute_seconds"] * 1e3,
            "requests_per_batch": mean["batch_requests"]}


#: ``smysl serve`` placements measured: HTTP worker processes sharing one engine (the default
#: ``--workers auto``: half the CPUs, at most 8, on CUDA; then 12, whether more workers, each
#: with fewer clients, help where the load's 4 processes and the engine share 16 CPUs; 4),
#: and one process with the engine in a child (the engine in the server process measured
#: 0.13 of offline on an H200, below one process's 0.15: not repeated).
SERVER_VARIANTS = (("--workers auto (the default)", ()), ("--workers 12", ("--workers", "12")),
                   ("--workers 4", ("--workers", "4")),
                   ("one process, engine in a child process", ("--workers", "1")))


@functools.cache
def offline(work: Path) -> tuple[Path, list[str], np.ndarray, float, list[int]]:
    """The server sections' texts and their in-process pass, once for both sections: the 0.6B
    checkpoint, the short texts, their vectors, the seconds of that pass, their token counts."""
    from smysl import Embedder

    ck = random_checkpoint("0.6b", work / "qwen3-0.6b-random")
    texts = corpus(4.0)
    short = [t for t in texts if len(t) < 400][:SHORT_TEXTS]
    m = Embedder.load(str(ck), device=DEV, dtype="bfloat16")
    m.embed(short[:64])
    ref, off = timed(m.embed, short)
    counts = m.count_tokens(short)
    del m
    free()
    return ck, short, ref, off, counts


def server(work: Path, variants: tuple[tuple[str, tuple[str, ...]], ...], bar: bool) -> None:
    """``smysl serve`` in each of ``variants`` against the same offline pass (``bar``: the
    first measures the issue's bar, run even after the deadline)."""
    for i, (variant, extra) in enumerate(variants):
        step(f"server {variant}", functools.partial(serve_once, *offline(work), variant, extra),
             bar=bar and i == 0)


#: Times the longer 64-client load sends each text.
LONG_ROUNDS = 4

#: Tokens per request of the bulk measure: under the server's ``max_request_tokens`` (65,536).
BULK_TOKENS = 60_000


def bulk_requests(counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Runs ``(start, stop)`` of consecutive texts of at most ``budget`` tokens each."""
    runs: list[tuple[int, int]] = []
    start = tokens = 0
    for i, n in enumerate(counts):
        if i > start and tokens + n > budget:
            runs.append((start, i))
            start, tokens = i, 0
        tokens += n
    return [*runs, (start, len(counts))] if counts else runs


def serve_once(ck: Path, short: list[str], ref: np.ndarray, off: float, counts: list[int],
               variant: str, extra: tuple[str, ...]) -> None:
    from load_test import Conn, Server

    n_tok = sum(counts)
    srv = Server(str(ck), *extra, device=DEV)
    try:
        srv.wait_ready(180)
        with urllib.request.urlopen(f"{srv.url}/info", timeout=10) as r:
            info = json.loads(r.read())

        async def single() -> list[float]:
            host, port = srv.url.removeprefix("http://").rsplit(":", 1)
            conn = Conn(host, int(port))
            ts = []
            for i in range(120):
                t = time.perf_counter()
                status, _, _ = await conn.post("/embed", {"inputs": [short[0]]})
                assert status == 200
                if i >= 20:
                    ts.append((time.perf_counter() - t) * 1000)
            await conn.close()
            return ts

        async def bulk() -> tuple[float, float]:
            """All the texts in a few large OpenAI requests (base64, each under the server's
            token limit), sent at once: -> (seconds, min cosine)."""
            host, port = srv.url.removeprefix("http://").rsplit(":", 1)

            async def one(a: int, b: int) -> np.ndarray:
                conn = Conn(host, int(port))
                status, _, payload = await conn.post("/v1/embeddings", {
                    "input": short[a:b], "encoding_format": "base64"})
                await conn.close()
                assert status == 200, payload[:200]
                data = sorted(json.loads(payload)["data"], key=lambda d: d["index"])
                return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), np.float32)
                                 for d in data])

            runs = bulk_requests(counts, BULK_TOKENS)
            t = time.perf_counter()
            parts = await asyncio.gather(*(one(a, b) for a, b in runs))
            wall = time.perf_counter() - t
            return wall, float((np.concatenate(parts) * ref).sum(axis=1).min())

        # bounded: a wedged engine would hold each request for the server's 120 s timeout,
        # and the outer timeout would take every later section with it
        ts = asyncio.run(asyncio.wait_for(single(), 120))
        asyncio.run(asyncio.wait_for(bulk(), 120))  # warm
        bulk_s, bulk_cos = asyncio.run(asyncio.wait_for(bulk(), 120))
        _clients(srv.url, short[:256], 64, ref[:256])  # every worker up and warm
        m0 = scrape(srv.url)
        cpu0 = tree_cpu(srv.proc.pid)
        wall, lat, min_cos, client_cpu = _clients(srv.url, short, 64, ref)
        cpu1 = tree_cpu(srv.proc.pid)
        parts = latency_parts(m0, scrape(srv.url), lat)
        shares = busiest(cpu0, cpu1, wall, srv.proc.pid)
        # the same load over each text LONG_ROUNDS times: the rate once every client runs,
        # with the start (64 connections at once) and the tail (the last clients alone) a
        # smaller part of the wall time than in one pass over the texts (~0.2-0.4 s)
        # (after the bar's pass has its numbers: a failure here loses only this line)
        try:
            long_wall, _, long_cos, long_cpu = _clients(srv.url, short, 64, ref, LONG_ROUNDS)
            long_rate: float | None = LONG_ROUNDS * len(short) / long_wall
            min_cos = min(min_cos, long_cos)
        except Exception as e:
            log(f"the longer 64-client load failed: {type(e).__name__}: {e}")
            long_rate, long_cpu = None, []
        row = {"offline_tok_s": n_tok / off, "offline_texts_s": len(short) / off,
               "http_tok_s": n_tok / wall, "http_texts_s": len(short) / wall,
               "ratio": off / wall, "long_texts_s": long_rate,
               "long_ratio": long_rate / (len(short) / off) if long_rate else None,
               "min_cos_vs_in_process": min_cos,
               "single_p50_ms": float(np.percentile(ts, 50)),
               "single_p95_ms": float(np.percentile(ts, 95)),
               "clients_p50_ms": float(np.percentile(lat, 50) * 1000),
               "bulk_texts_s": len(short) / bulk_s, "bulk_ratio": off / bulk_s,
               "bulk_min_cos": bulk_cos,
               "cuda_graphs": info.get("cuda_graphs"), "client_procs": CLIENT_PROCS,
               "cpu_us_per_request": (sum(cpu1.values()) - sum(cpu0.values())) / len(short) * 1e6,
               "busiest": shares[:10], "latency_parts_ms": parts,
               "client_cpu": client_cpu, "long_client_cpu": long_cpu}
        RES[f"server_0.6b {variant}"] = row
        log(f"\n## smysl serve on loopback, 0.6B bf16, {variant} ({len(short)} short texts, "
            f"{n_tok} tokens; graphs {row['cuda_graphs']})\n")
        log("| measure | value |\n|---|---|")
        log(f"| single query p50 / p95 (TEI /embed, 1 client) | {row['single_p50_ms']:.2f} / "
            f"{row['single_p95_ms']:.2f} ms |")
        log(f"| offline Embedder.embed(texts) | {row['offline_texts_s']:,.0f} texts/s |")
        log(f"| 64 clients ({CLIENT_PROCS} processes), one text per request | "
            f"{row['http_texts_s']:,.0f} texts/s (p50 {row['clients_p50_ms']:.1f} ms) |")
        log(f"| HTTP / offline | {row['ratio']:.2f} |")
        log(f"| the same, each text {LONG_ROUNDS} times (less of the start and the tail) | "
            + (f"{long_rate:,.0f} texts/s, {long_rate / row['offline_texts_s']:.2f} of offline |"
               if long_rate else "failed |"))
        log(f"| during the 64 clients: CPU of the server's processes per request; each one's "
            f"share of a core (the engine process waits for a pass asleep, on a blocking CUDA "
            f"event: what it shows is its work) | "
            f"{row['cpu_us_per_request']:,.0f} us; "
            + ", ".join(f"{name} {share:.2f}" for name, share in shares[:10]) + " |")
        log(f"| the {CLIENT_PROCS} load processes' shares of a core (near 1.0: the clients, "
            "not the server, set the rate), the bar's load; the longer one | "
            + ", ".join(f"{x:.2f}" for x in client_cpu) + "; "
            + (", ".join(f"{x:.2f}" for x in long_cpu) or "-") + " |")
        log("| during the 64 clients, means (the server's /metrics): a client's wait; the "
            "server's time per request; a request's wait for a batch; the backend's time per "
            "batch (engine round trip); requests per batch | " + (
                f"{parts['client_ms']:.2f} ms; {parts['server_ms']:.2f} ms; "
                f"{parts['queue_ms']:.2f} ms; {parts['compute_ms']:.2f} ms; "
                f"{parts['requests_per_batch']:.1f} |" if parts else "(no metrics) |"))
        log(f"| all {len(short)} texts in {len(bulk_requests(counts, BULK_TOKENS))} requests of <= "
            f"{BULK_TOKENS:,} tokens, sent at once (base64) | "
            f"{row['bulk_texts_s']:,.0f} texts/s, {row['bulk_ratio']:.2f} of offline, min "
            f"cosine {bulk_cos:.6f} |")
        log(f"| min cosine HTTP vs in-process (both 64-client loads) | {min_cos:.6f} |")
    finally:
        srv.stop()
        tail = [x for x in srv.output().splitlines() if "POST /embed" not in x]
        log("server log (requests left out):\n" + "\n".join(tail[-15:]))


def preflight() -> None:
    """What the sections need, imported up front: a module the device lacks shows here at
    once, not as a server that exits in every variant."""
    import importlib

    found, missing = [], []
    for name in ("smysl.server.app", "uvicorn", "uvloop", "httptools", "orjson", "gguf",
                 "triton", "sentence_transformers", "pytest"):
        try:
            mod = importlib.import_module(name)
            found.append(f"{name} {getattr(mod, '__version__', '')}".strip())
        except Exception as e:
            missing.append(f"{name} ({type(e).__name__}: {e})")
    RES["preflight"] = {"found": found, "missing": missing}
    log(f"imports: {', '.join(found)}" + (f"\n!! missing: {'; '.join(missing)}" if missing
                                          else ""))
    if DEV == "cuda":
        RES["preflight"]["triton_launch"] = triton_launch()
        log(f"a Triton kernel on CUDA: {RES['preflight']['triton_launch']}")


def triton_launch() -> str:
    """One tiny Triton kernel compiled and run on the GPU: the fused kernels need a C compiler
    and Python's headers (Triton builds its launcher), libcuda and a writable cache. Without
    them every engine falls back to eager with a warning in its log only, and each "fused vs
    eager" row would compare eager with eager: said here, first."""
    import shutil
    import sysconfig

    headers = (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()
    where = (f"cc {shutil.which('cc') or shutil.which('gcc') or 'missing'}, Python.h "
             f"{'found' if headers else 'missing'}")
    try:
        import triton
        import triton.language as tl

        @triton.jit
        def add_one(x_ptr, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) + 1, mask=i < n)

        x = torch.zeros(100, device=DEV)
        add_one[(1,)](x, 100, BLOCK=128)
        ok = bool((x == 1).all())
        return f"ok ({where})" if ok else f"!! wrong result ({where})"
    except Exception as e:
        return f"!! failed: {type(e).__name__}: {str(e)[:300]} ({where})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--work", default="/tmp/smysl-gpu")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds after which no new section starts")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds after which no optional step starts (eager passes, int4, "
                         "profiles, server variants); default 480, none in a dry run")
    ap.add_argument("--shapes", default="0.6b,8b,4b")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU, tiny shapes: the script's plumbing, no GPU numbers")
    args = ap.parse_args()
    global DEADLINE, OUT
    DEADLINE = args.deadline if args.deadline is not None else (
        float("inf") if args.dry_run else 480.0)
    if args.dry_run:
        global DEV, SHORT_TEXTS
        DEV, SHORT_TEXTS = "cpu", 300
        for size in SHAPES:  # every size builds the tiny checkpoint, in its own folder
            SHAPES[size] = dict(TINY)
        args.work += "-dry-run"
        args.scale = min(args.scale, 0.5)
        args.skip_tests = True
        args.budget = float("inf")
    out, work = Path(args.out), Path(args.work)
    OUT = out
    # Triton's cache (compiled kernels, launchers) where it can write, for the subprocesses too
    os.environ.setdefault("TRITON_CACHE_DIR", str(work / "triton-cache"))
    # ``timeout`` stops the run with SIGTERM: through the finally below, which saves gpu.json
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    # each load's CUDA choices in the log: graphs captured, the fused kernels' check
    cuda_log = logging.getLogger("smysl.qwen3.cuda")
    cuda_log.setLevel(logging.INFO)
    cuda_log.addHandler(logging.StreamHandler(sys.stdout))
    import transformers

    RES.update(gpu=torch.cuda.get_device_name() if DEV == "cuda" else "dry run on the CPU",
               torch=torch.__version__,
               transformers=transformers.__version__)
    log(f"# smysl GPU check on {RES['gpu']}, torch {RES['torch']}, transformers "
        f"{RES['transformers']}")
    preflight()
    texts = corpus(args.scale)
    from smysl.tokenize import Tokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from qwen_tiny import embedding_tokenizer_json

    tok_file = work / "tokenizer.json"
    tok_file.write_text(json.dumps(embedding_tokenizer_json()), encoding="utf-8")
    n_tok = sum(Tokenizer(tok_file, 40960).count(texts))
    RES["corpus"] = {"texts": len(texts), "tokens": n_tok, "scale": args.scale}
    log(f"corpus: {len(texts)} texts, {n_tok} tokens")
    try:
        if not args.skip_tests:
            section("pytest -m gpu", args.budget, lambda: gpu_tests(out))
        ck = random_checkpoint("0.6b", work / "qwen3-0.6b-random", device=DEV)
        section("parity", args.budget, lambda: parity(ck, texts[:48]))
        shapes = args.shapes.split(",")
        if "0.6b" in shapes:
            section("0.6b", args.budget, lambda: shape_run("0.6b", work, texts, n_tok, False))
        # the default server (a bar), the 8B (bars), then the comparisons: the other server
        # variants, the 4B
        section("server", args.budget, lambda: server(work, SERVER_VARIANTS[:1], True))
        others = "server, other variants"
        causes = "0.6b first-pass causes"  # three fresh processes: after the bars
        order = [s for s in shapes if s == "8b"] + [others] + (
            [causes] if "0.6b" in shapes else []) + [
            s for s in shapes if s not in ("0.6b", "8b")]
        for name in order:
            if name == others:
                section(name, args.budget, lambda: server(work, SERVER_VARIANTS[1:], False))
            elif name == causes:
                step(name, lambda: first_pass_causes(ck, texts,
                                                     RES.setdefault("shape_0.6b", {})))
            else:
                section(name, args.budget,
                        lambda size=name: shape_run(size, work, texts, n_tok, size == "8b"))
    finally:
        save()
        log(f"\ntotal {elapsed():.0f} s")


if __name__ == "__main__":
    main()
