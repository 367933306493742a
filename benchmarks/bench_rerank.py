"""Reranking speed on CPU: smysl's native Qwen3-Reranker vs the model card's transformers recipe.

Usage (from the repo root, after the README's dev install):

    .venv/bin/python benchmarks/bench_rerank.py                       # 20 queries x 50, 0.6B
    .venv/bin/python benchmarks/bench_rerank.py --layers 2 --queries 2 --candidates 8  # smoke

Both systems score the same (query, paragraph) pairs in the same run, in float32 on the CPU, on a
random-weight checkpoint of the real Qwen3-Reranker-0.6B shape (``Qwen3ForCausalLM``, tied head,
base tokenizer): XQuAD questions (half Russian, half English), each against its own paragraph
and random others of its language. The reference is the model card's code (left padding, full
vocabulary logits, its own batching: ``--ref-batch`` pairs per forward pass); smysl gets each
query's candidates in one ``rerank`` call. Prints pairs/s, the speed-up and the largest score
difference. Random weights: speed does not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, OUT, SHAPES, TOKENIZER


def random_reranker(out: Path, layers: int) -> Path:
    """A Qwen3-Reranker-0.6B-shaped ``Qwen3ForCausalLM`` with random bf16 weights (``layers``
    decoder layers), the base tokenizer and left padding, as the real repo ships it."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shape = {**SHAPES["0.6b"], "num_hidden_layers": layers}
    cfg = Qwen3Config(head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, 0.02)
    model.tie_weights()
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="5GB")
    shutil.copy(TOKENIZER / "tokenizer.json", tmp / "tokenizer.json")
    tc = json.loads((TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc["padding_side"] = "left"
    (tmp / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    tmp.rename(out)
    return out


def workload(queries: int, candidates: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """(question, paragraphs): XQuAD questions, half ru and half en, each with its own
    paragraph and ``candidates - 1`` random others of its language, shuffled."""
    rng = random.Random(seed)
    out: list[tuple[str, list[str]]] = []
    for n, lang in enumerate(("ru", "en")):
        data = json.loads((DATASETS / "xquad" / f"xquad.{lang}.json").read_text("utf-8"))
        paras = [p for art in data["data"] for p in art["paragraphs"]]
        want = queries // 2 + (queries % 2 if n == 0 else 0)
        for p in rng.sample(paras, want):
            others = rng.sample([q["context"] for q in paras if q is not p], candidates - 1)
            docs = [p["context"], *others]
            rng.shuffle(docs)
            out.append((rng.choice(p["qas"])["question"], docs))
    return out


Work = list[tuple[str, list[str]]]
Scorer = Callable[[Work], list[list[float]]]


def reference(path: Path, batch: int) -> Scorer:
    """The model card's recipe (huggingface.co/Qwen/Qwen3-Reranker-0.6B), float32, loaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    from smysl.qwen3.reranker import MAX_TOKENS, PREFIX, SUFFIX, format_pair

    prefix = tok.encode(PREFIX, add_special_tokens=False)
    suffix = tok.encode(SUFFIX, add_special_tokens=False)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")

    def run(work: Work) -> list[list[float]]:
        scores: list[list[float]] = []
        for query, docs in work:
            scores.append(one(query, docs))
        return scores

    def one(query: str, docs: list[str]) -> list[float]:
        texts = [format_pair(query, d) for d in docs]
        row: list[float] = []
        for s in range(0, len(texts), batch):
            inputs = tok(texts[s : s + batch], padding=False, truncation="longest_first",
                         return_attention_mask=False,
                         max_length=MAX_TOKENS - len(prefix) - len(suffix))
            for i, ele in enumerate(inputs["input_ids"]):
                inputs["input_ids"][i] = prefix + ele + suffix
            padded = tok.pad(inputs, padding=True, return_tensors="pt", max_length=MAX_TOKENS)
            with torch.no_grad():
                logits = model(**padded).logits[:, -1, :]
            pair = torch.stack([logits[:, no], logits[:, yes]], dim=1)
            row += torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp().tolist()
        return row

    return run


def native(path: Path, dtype: str = "float32", shared_prefix: bool = True) -> Scorer:
    """smysl's reranker, loaded: each query's candidates in one ``rerank`` call."""
    import torch

    from smysl import Reranker

    r = Reranker.load(str(path), device="cpu", dtype=dtype, shared_prefix=shared_prefix,
                      threads=torch.get_num_threads())  # the run's count, not a tuned one

    def run(work: Work) -> list[list[float]]:
        out = []
        for query, docs in work:
            ranked = dict(r.rerank(query, docs))
            out.append([ranked[i] for i in range(len(docs))])
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--layers", type=int, default=SHAPES["0.6b"]["num_hidden_layers"],
                    help="decoder layers of the random checkpoint (fewer: a quick smoke run)")
    ap.add_argument("--ref-batch", type=int, default=8,
                    help="pairs per forward pass of the reference recipe")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-reference", action="store_true",
                    help="smysl's variants only (the shared-prefix A/B)")
    ap.add_argument("--dtypes", default="float32",
                    help="smysl dtypes to run, comma-separated (float32, bfloat16, auto)")
    ap.add_argument("--no-whole", action="store_true",
                    help="skip smysl's whole-prompt runs (the shared-prefix A/B)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path = random_reranker(OUT / f"reranker-0.6b-{args.layers}l", args.layers)
    work = workload(args.queries, args.candidates)
    pairs = sum(len(d) for _, d in work)
    from smysl.qwen3.cpu import detect

    print(f"CPU: {detect().describe()}; torch threads {torch.get_num_threads()}; "
          f"{len(work)} queries, {pairs} pairs", flush=True)
    runs: list[tuple[str, Callable[[], Scorer]]] = []
    for dt in args.dtypes.split(","):
        runs.append((f"smysl {dt}", lambda dt=dt: native(path, dt)))
        if not args.no_whole:
            runs.append((f"smysl {dt} whole",
                         lambda dt=dt: native(path, dt, shared_prefix=False)))
    if not args.no_reference:
        runs.append(("transformers", lambda: reference(path, args.ref_batch)))
    results = {}
    for name, make in runs:
        scorer = make()  # loading is not timed
        t0 = time.perf_counter()
        scores = scorer(work)
        secs = time.perf_counter() - t0
        results[name] = (scores, secs)
        print(f"{name:>22}: {pairs} pairs in {secs:.1f} s = {pairs / secs:.2f} pairs/s",
              flush=True)
        del scorer
    base = "transformers" if "transformers" in results else runs[-1][0]
    for name, (scores, secs) in results.items():
        if name == base:
            continue
        a = np.array([x for row in scores for x in row])
        b = np.array([x for row in results[base][0] for x in row])
        same = all(np.argsort(-np.array(x), kind="stable").tolist()
                   == np.argsort(-np.array(y), kind="stable").tolist()
                   for x, y in zip(scores, results[base][0], strict=True))
        print(f"{name} vs {base}: speed-up {results[base][1] / secs:.2f}x; max |score "
              f"difference| {np.abs(a - b).max():.2e}; rankings identical: {same}", flush=True)


if __name__ == "__main__":
    main()
