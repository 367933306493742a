"""Print the CPU fp32 parity table (smysl vs the transformers reference recipe) for the tiny
checkpoint matrix the tests use: GQA 2/4, tied/untied, both tokenizer variants, bf16 source.

    .venv/bin/python benchmarks/parity_report.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qwen_tiny import TEXTS, build_tiny, reference_embed

from smysl import Embedder
from smysl.prompts import format_query

VARIANTS = {
    "GQA 2, tied, embedding tokenizer, fp32": dict(heads=4, kv_heads=2),
    "GQA 4, untied, base tokenizer, CausalLM sharded": dict(
        heads=8, kv_heads=2, tied=False, eos_tokenizer=False, causal_lm=True, shard=True,
        st_files=False, seed=1),
    "GQA 4, tied, base tokenizer": dict(heads=8, kv_heads=2, eos_tokenizer=False, seed=2),
    "GQA 2, untied, embedding tokenizer, bf16 file": dict(tied=False, dtype="bfloat16", seed=3),
}


def main() -> None:
    queries = [format_query(q, "Find relevant passages") for q in ["как работает поиск?", "x"]]
    texts = TEXTS + queries + [" ".join(f"слово{i}" for i in range(90))]
    print("| checkpoint | texts | max abs diff | min cosine | batch vs alone |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in VARIANTS.items():
            t = build_tiny(Path(tmp) / str(abs(hash(name))), **kw)  # type: ignore[arg-type]
            # the exact path: "auto" would pick bf16 for the bf16 file on a bf16-native CPU
            emb = Embedder.load(str(t.path), device="cpu", dtype="float32")
            ours, ref = emb.embed(texts), reference_embed(t.path, texts)
            alone = np.concatenate([emb.embed([x]) for x in texts])
            same = "bit-identical" if np.array_equal(alone, ours) else \
                f"{np.abs(alone - ours).max():.1e}"
            print(f"| {name} | {len(texts)} | {np.abs(ours - ref).max():.1e} | "
                  f"{(ours * ref).sum(1).min():.7f} | {same} |")


if __name__ == "__main__":
    main()
