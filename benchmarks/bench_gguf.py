"""smysl vs llama.cpp on the same GGUF files, side by side in one run (issue 14).

    .venv/bin/python benchmarks/bench_gguf.py --size 0.6b --types Q8_0,Q6_K,Q4_K_M --scale 0.25
    .venv/bin/python benchmarks/bench_gguf.py --systems int4   # the kept path only

Needs ``llama-cpp-python`` (built from source; not a project dependency). From a random
real-shape bf16 checkpoint: an F16 GGUF written the way convert_hf_to_gguf.py writes it
(``qwen_tiny.write_gguf``, ``add_eos_token`` true so llama.cpp appends ``<|endoftext|>``), then
each type made from it by llama.cpp's own quantizer (``llama_model_quantize``). For each file:
tokens/s and the min/mean cosine of each system's vectors to the fp32 vectors of the unquantised
weights (smysl float32 on the safetensors, which matches transformers to ~1e-7), on the same
texts and threads. llama.cpp: embedding mode, last-token pooling, normalised.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, random_checkpoint

#: llama.cpp's ``llama_ftype`` of each file type made here (the IQ2/IQ1 types need an
#: importance matrix; llama-cpp-python 0.3.36's quantizer also refused IQ3_XXS without one).
FTYPES = {"Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q4_K_M": 15, "Q3_K_M": 12, "Q2_K": 10,
          "IQ4_XS": 30, "IQ3_M": 27, "IQ3_S": 26}
#: smysl's ways to run a GGUF file: name -> (label, Embedder.load options).
SYSTEMS: dict[str, tuple[str, dict[str, str]]] = {
    "float32": ("smysl float32", {"dtype": "float32"}),
    "bfloat16": ("smysl bfloat16", {"dtype": "bfloat16"}),
    "int4": ("smysl int4 (kept)", {"quantize": "int4"}),
}


def quantize(src: Path, out: Path, kind: str, threads: int) -> Path:
    import llama_cpp

    if out.is_file():
        return out
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {kind} failed ({rc})")
    return out


def llama_vectors(path: Path, texts: list[str], threads: int) -> tuple[np.ndarray, float]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), embedding=True, n_ctx=8192, n_batch=8192,
                          n_ubatch=8192, n_threads=threads, n_threads_batch=threads,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST, verbose=False)
    llm.embed(texts[:2], normalize=True)  # warm-up
    t = time.perf_counter()
    out = np.asarray(llm.embed(texts, normalize=True), dtype=np.float32)
    secs = time.perf_counter() - t
    del llm
    return out, secs


def smysl_vectors(model: str, texts: list[str], threads: int, **opts: str
                  ) -> tuple[np.ndarray, float]:
    from smysl import Embedder

    e = Embedder.load(model, device="cpu", threads=threads, **opts)
    e.embed(texts[:2])
    t = time.perf_counter()
    v = e.embed(texts)
    return v, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="0.6b")
    ap.add_argument("--types", default="Q8_0,Q6_K,Q4_K_M")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/smysl-bench")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="smysl systems to run beside llama.cpp, comma-separated")
    args = ap.parse_args()
    work = Path(args.work)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from qwen_tiny import write_gguf

    from smysl import Embedder

    ckpt = random_checkpoint(args.size, work / f"qwen3-{args.size}-random")
    f16 = work / f"qwen3-{args.size}-F16.gguf"
    if not f16.is_file():
        write_gguf(ckpt, f16, ftype="F16", add_eos=True)
    texts = corpus(args.scale)
    ref = Embedder.load(str(ckpt), device="cpu", dtype="float32", threads=args.threads)
    n_tok = sum(ref.count_tokens(texts))
    want = ref.embed(texts)
    del ref
    print(f"{args.size}: {len(texts)} texts, {n_tok} tokens, {args.threads} threads; cosine to "
          "fp32 of the unquantised weights\n")
    print("| file | system | tokens/s | min cosine | mean cosine | min cosine to llama.cpp |\n"
          "|---|---|---|---|---|---|")
    for kind in ["F16", *args.types.split(",")]:
        path = f16 if kind == "F16" else quantize(f16, work / f"qwen3-{args.size}-{kind}.gguf",
                                                   kind, args.threads)
        runs: list[tuple[str, np.ndarray, float]] = []
        v, s = llama_vectors(path, texts, args.threads)
        runs.append(("llama.cpp", v, s))
        for name in args.systems.split(","):
            label, opts = SYSTEMS[name]
            if "quantize" in opts and kind == "F16":
                continue
            v, s = smysl_vectors(str(path), texts, args.threads, **opts)
            runs.append((label, v, s))
        llama = runs[0][1]
        for label, v, s in runs:
            cos = (v * want).sum(axis=1)
            to_llama = (v * llama).sum(axis=1).min()
            print(f"| {kind} | {label} | {n_tok / s:,.1f} | {cos.min():.5f} | {cos.mean():.5f} | "
                  f"{to_llama:.5f} |", flush=True)


if __name__ == "__main__":
    main()
