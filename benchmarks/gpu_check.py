"""One-shot CUDA check (< 8 minutes on one H100/H200): parity, throughput, 32K context.

    python benchmarks/gpu_check.py [--out DIR] [--skip-8b]

1. Parity on the real 0.6B shape (random weights): smysl fp32/bf16 on CUDA vs the transformers
   reference recipe in fp32 (TF32 off; left padding, official last-token pool, F.normalize).
2. Throughput, same GPU, same texts: smysl bf16 vs sentence-transformers bf16 (its default
   length-sorted batching, batch_size 32) for the 0.6B and 8B shapes.
3. One 32,768-token input on the 8B shape (bf16 and fp16): time, peak memory, finiteness.
Prints Markdown tables and writes ``gpu.json`` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, random_checkpoint

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def log(msg: str) -> None:
    print(msg, flush=True)


def reference(model: torch.nn.Module, tok: object, texts: list[str], bs: int = 8) -> np.ndarray:
    """transformers reference recipe, fp32, left padding, official last-token pool."""
    import torch.nn.functional as F

    out = []
    for i in range(0, len(texts), bs):
        batch = tok(texts[i : i + bs], padding=True, return_tensors="pt").to("cuda")  # type: ignore[operator]
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        mask = batch["attention_mask"]
        if bool(mask[:, -1].sum() == mask.shape[0]):
            pooled = h[:, -1]
        else:
            pooled = h[torch.arange(h.shape[0], device="cuda"), mask.sum(1) - 1]
        out.append(F.normalize(pooled.float(), dim=1).cpu().numpy())
    return np.concatenate(out)


def timed(fn, *a, **k):  # type: ignore[no-untyped-def]
    torch.cuda.synchronize()
    t = time.perf_counter()
    r = fn(*a, **k)
    torch.cuda.synchronize()
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--work", default="/tmp/smysl-gpu")
    ap.add_argument("--skip-8b", action="store_true")
    ap.add_argument("--scale", type=float, default=2.0)
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, Qwen3Model

    from smysl import Embedder

    res: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    log(f"# smysl GPU check on {res['gpu']}, torch {res['torch']}")
    texts = corpus(args.scale)
    lens = None

    # ---------------------------------------------------------------- 1. parity (0.6B)
    t0 = time.perf_counter()
    ck = random_checkpoint("0.6b", work / "qwen3-0.6b-random")
    ptexts = texts[:48]
    tok = AutoTokenizer.from_pretrained(str(ck), padding_side="left")
    ref_model = Qwen3Model.from_pretrained(str(ck), dtype=torch.float32).cuda().eval()
    ref = reference(ref_model, tok, ptexts)
    del ref_model
    torch.cuda.empty_cache()
    parity = {}
    for dtype in ("float32", "bfloat16", "float16"):
        e = Embedder.load(str(ck), device="cuda", dtype=dtype)
        v = e.embed(ptexts)
        parity[dtype] = {"max_abs": float(np.abs(v - ref).max()),
                         "min_cos": float((v * ref).sum(1).min()),
                         "finite": bool(np.isfinite(v).all())}
        if lens is None:
            lens = e.count_tokens(texts)  # type: ignore[attr-defined]
        del e
        torch.cuda.empty_cache()
    res["parity_0.6b_vs_transformers_fp32"] = parity
    log("\n## Parity, 0.6B shape, vs transformers fp32 (48 texts)\n")
    log("| smysl dtype | max abs diff | min cosine | finite |\n|---|---|---|---|")
    for k, p in parity.items():
        log(f"| {k} | {p['max_abs']:.2e} | {p['min_cos']:.6f} | {p['finite']} |")
    log(f"(parity took {time.perf_counter() - t0:.0f} s)")

    # ---------------------------------------------------------------- 2. throughput
    n_tok = sum(lens or [])
    res["corpus"] = {"texts": len(texts), "tokens": n_tok}
    log(f"\n## Throughput, bf16, {len(texts)} texts / {n_tok} tokens\n")
    log("| shape | system | tokens/s | texts/s | seconds | peak GiB |\n|---|---|---|---|---|---|")
    sizes = ["0.6b"] if args.skip_8b else ["0.6b", "8b"]
    for size in sizes:
        ck = random_checkpoint(size, work / f"qwen3-{size}-random")
        for system in ("sentence-transformers", "smysl"):
            torch.cuda.reset_peak_memory_stats()
            if system == "smysl":
                m = Embedder.load(str(ck), device="cuda", dtype="bfloat16")
                run = m.embed
            else:
                st = SentenceTransformer(str(ck), device="cuda",
                                         model_kwargs={"dtype": torch.bfloat16})

                def run(x, st=st):  # type: ignore[no-untyped-def]
                    return st.encode(x, batch_size=32, normalize_embeddings=True)
            run(texts[:16])
            _, secs = timed(run, texts)
            peak = torch.cuda.max_memory_allocated() / 2**30
            row = {"tok_s": n_tok / secs, "texts_s": len(texts) / secs, "secs": secs,
                   "peak_gib": peak}
            res[f"throughput_{size}_{system}"] = row
            log(f"| {size} | {system} | {row['tok_s']:.0f} | {row['texts_s']:.1f} | "
                f"{secs:.2f} | {peak:.1f} |")
            del run
            if system == "smysl":
                del m
            else:
                del st
            torch.cuda.empty_cache()
        st_tok_s = res[f"throughput_{size}_sentence-transformers"]["tok_s"]
        r = res[f"throughput_{size}_smysl"]["tok_s"] / st_tok_s
        log(f"| {size} | smysl / ST | {r:.2f}x | | | |")

    # ---------------------------------------------------------------- 3. 32K on 8B
    if not args.skip_8b:
        log("\n## One 32,768-token input, 8B shape\n")
        log("| dtype | seconds | peak GiB | finite |\n|---|---|---|---|")
        ck = work / "qwen3-8b-random"
        ids = [[(i * 7919) % 150000 for i in range(32767)]]
        for dtype in ("bfloat16", "float16"):
            e = Embedder.load(str(ck), device="cuda", dtype=dtype)
            torch.cuda.reset_peak_memory_stats()
            v, secs = timed(e.embed_token_ids, ids)  # type: ignore[attr-defined]
            peak = torch.cuda.max_memory_allocated() / 2**30
            res[f"long32k_8b_{dtype}"] = {"secs": secs, "peak_gib": peak,
                                          "finite": bool(np.isfinite(v).all())}
            log(f"| {dtype} | {secs:.2f} | {peak:.1f} | {bool(np.isfinite(v).all())} |")
            del e
            torch.cuda.empty_cache()
    (out / "gpu.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
