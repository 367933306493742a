"""Shared pieces of the benchmark scripts: random real-shape checkpoints and a fixed corpus."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import sys
from pathlib import Path

# The embedding tokenizer and sentence-transformers files are built the same way as the tests'
# fixtures: one definition, in tests/qwen_tiny.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# SHARED: ../shared beside the checkout, or a copy inside it (the GPU machine gets only that)
from qwen_tiny import SHARED, embedding_tokenizer_json, write_st_files

ROOT = Path(__file__).resolve().parents[1]
#: Where benchmarks keep their random checkpoints and vectors (``SMYSL_BENCH_DIR`` overrides).
OUT = Path(os.environ.get("SMYSL_BENCH_DIR", ROOT / "bench-out"))
TOKENIZER = SHARED / "qwen3-tokenizer"
DATASETS = SHARED / "datasets"

#: Real Qwen3-Embedding shapes (config.json fields).
SHAPES: dict[str, dict[str, int]] = {
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, intermediate_size=3072, vocab_size=151669,
                 max_position_embeddings=32768),
    "4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=9728, vocab_size=151665,
               max_position_embeddings=40960),
    "8b": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=12288, vocab_size=151665,
               max_position_embeddings=40960),
}


def random_checkpoint(size: str, out: Path, dtype: str = "bfloat16", device: str = "cpu"
                      ) -> Path:
    """A Qwen3-Embedding-shaped checkpoint with random weights, laid out like the real repo
    (safetensors in bf16, tokenizer with EOS post-processor, sentence-transformers files).
    ``device``: where the random numbers are drawn (``cuda``: seconds instead of minutes)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import Qwen3Config, Qwen3Model

    cfg = Qwen3Config(head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=size == "0.6b", **SHAPES[size])
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen3Model(cfg)
    model = model.to(getattr(torch, dtype)).to_empty(device=device)  # no fp32 copy of 8B
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02)
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="5GB")
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    (tmp / "tokenizer.json").write_text(json.dumps(embedding_tokenizer_json()), encoding="utf-8")
    tc = json.loads((TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc["padding_side"] = "left"  # as in the Qwen3-Embedding repos
    (tmp / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    write_st_files(tmp, cfg.hidden_size)
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32768,
                                                               "do_lower_case": False}))
    tmp.rename(out)
    return out


def random_gguf_checkpoint(size: str, out: Path, recipe: str = "Q4_K_M") -> Path:
    """A GGUF file of random weights with the real shapes of ``size``, typed like llama.cpp's
    ``recipe`` (``Q4_K_M`` or ``Q8_0``; see ``qwen_tiny.random_gguf``)."""
    if out.is_file():
        return out
    from qwen_tiny import random_gguf

    cfg = dict(SHAPES[size], head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
               model_type="qwen3")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    random_gguf(cfg, tmp, recipe=recipe)
    tmp.rename(out)
    return out


def _csv(path: Path, col: int | str, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct non-empty values of column ``col`` (index: no header; name: header)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows: list = list(csv.DictReader(f) if isinstance(col, str) else csv.reader(f))
    texts = sorted({str(r[col]).strip() for r in rows if str(r[col]).strip()})
    return rng.sample(texts, min(n, len(texts)))


def _paragraphs(lang: str) -> list[str]:
    data = json.loads((DATASETS / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))
    return [p["context"] for art in data["data"] for p in art["paragraphs"]]


def corpus(scale: float = 1.0, seed: int = 0) -> list[str]:
    """Fixed mixed Russian/English corpus: short sentences to multi-paragraph texts."""
    rng = random.Random(seed)

    def k(n: int) -> int:
        return max(1, round(n * scale))

    texts: list[str] = []
    texts += _csv(DATASETS / "stsb" / "stsb-ru-test.csv", 0, k(150), rng)
    texts += _csv(DATASETS / "stsb" / "stsb-en-test.csv", 0, k(150), rng)
    texts += _csv(DATASETS / "sentirueval" / "SentiRuEval2016_small_test.csv", "text", k(50), rng)
    texts += _csv(DATASETS / "intents" / "intents_test.csv", "text", k(25), rng)  # ru
    texts += _csv(DATASETS / "intents" / "intents_test.csv", "answer", k(25), rng)  # en
    for lang in ("ru", "en"):
        paras = _paragraphs(lang)
        texts += rng.sample(paras, k(16))
        for _ in range(k(3)):  # multi-paragraph documents
            texts.append("\n\n".join(rng.sample(paras, 3)))
    rng.shuffle(texts)
    return texts
