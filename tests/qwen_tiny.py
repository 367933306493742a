"""Tiny random Qwen3 checkpoints and the transformers reference recipe (shared test helpers).

Checkpoints are written by transformers (``Qwen3Model`` / ``Qwen3ForCausalLM`` + safetensors) with
the real Qwen3 tokenizer from ``../shared/qwen3-tokenizer``, in both tokenizer variants: the base
one (post-processor adds nothing) and the embedding one (appends ``<|endoftext|>``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER_DIR = SHARED / "qwen3-tokenizer"
DATASETS = SHARED / "datasets"
EOS = 151643

TEXTS = [
    "Привет, мир!",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Смысл жизни — в поиске смысла. " * 6,
    "a",
    "Instruct: fake\nQuery:not a real query",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "Embeddings map text to vectors; similar texts land close together. " * 3,
]


def require_tokenizer() -> Path:
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        import pytest  # here, not at the top: benchmark scripts import this module too

        pytest.skip(f"Qwen3 tokenizer not found at {TOKENIZER_DIR}")
    return TOKENIZER_DIR


def embedding_tokenizer_json() -> dict:
    """The base tokenizer with Qwen3-Embedding's post-processor (appends <|endoftext|>)."""
    tok = json.loads((require_tokenizer() / "tokenizer.json").read_text(encoding="utf-8"))
    eos = {"id": "<|endoftext|>", "type_id": 0}
    template = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": eos}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": eos},
                 {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": eos | {"type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [EOS],
                                             "tokens": ["<|endoftext|>"]}},
    }
    tok["post_processor"] = {"type": "Sequence",
                             "processors": [tok["post_processor"], template]}
    return tok


@dataclass(frozen=True)
class Tiny:
    path: Path
    heads: int
    kv_heads: int
    tied: bool
    eos_tokenizer: bool
    dtype: str


def write_st_files(root: Path, hidden: int) -> None:
    """The sentence-transformers files of a Qwen3-Embedding repo: prompts, modules, last-token
    pooling, normalize."""
    (root / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": "Instruct: Given a web search query, retrieve relevant passages"
                             " that answer the query\nQuery:", "document": ""},
        "default_prompt_name": None, "similarity_fn_name": "cosine"}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True, "include_prompt": True}))
    (root / "2_Normalize").mkdir(exist_ok=True)


def build_tiny(root: Path, *, heads: int = 4, kv_heads: int = 2, tied: bool = True,
               eos_tokenizer: bool = True, dtype: str = "float32", causal_lm: bool = False,
               shard: bool = False, st_files: bool = True, seed: int = 0,
               max_positions: int = 512, hidden: int = 64) -> Tiny:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=151669, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=16,
        max_position_embeddings=max_positions, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
    )
    model = (Qwen3ForCausalLM if causal_lm else Qwen3Model)(cfg)
    with torch.no_grad():  # random norm scales so that a skipped norm cannot pass unnoticed
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 0.08)
    model = model.to(getattr(torch, dtype))
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root, max_shard_size="2MB" if shard else "10GB")
    src = require_tokenizer()
    shutil.copy(src / "tokenizer_config.json", root / "tokenizer_config.json")
    if eos_tokenizer:
        (root / "tokenizer.json").write_text(json.dumps(embedding_tokenizer_json()),
                                             encoding="utf-8")
    else:
        shutil.copy(src / "tokenizer.json", root / "tokenizer.json")
    if st_files:
        write_st_files(root, hidden=hidden)
    return Tiny(root, heads, kv_heads, tied, eos_tokenizer, dtype)


def fake_hub_cache(cache: Path, repo: str, src: Path,
                   commit: str = "1f0c5a4b6a4f0e6f8c7d9e0a1b2c3d4e5f607182") -> Path:
    """``src`` laid out as the Hugging Face cache does, so that ``repo`` loads offline with
    ``HF_HUB_CACHE=cache``: ``models--org--name/blobs/<sha256>`` (hard links where possible),
    ``snapshots/<commit>/<file>`` symlinks to the blobs, ``refs/main`` naming the commit."""
    import hashlib
    import os

    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        blob = base / "blobs" / h.hexdigest()
        if not blob.exists():
            try:
                os.link(f, blob)
            except OSError:
                shutil.copyfile(f, blob)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return snap


def reference_embed(path: Path, texts: list[str], dims: int | None = None) -> np.ndarray:
    """The transformers reference recipe: left padding, official last-token pool, F.normalize."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    model = _reference_model(path)
    tok = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    ids = [list(x) for x in tok(texts)["input_ids"]]
    for x in ids:
        if not x or x[-1] != EOS:  # the base tokenizer does not append EOS
            x.append(EOS)
    width = max(map(len, ids))
    input_ids = torch.tensor([[EOS] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    # official last_token_pool
    left_padding = mask[:, -1].sum() == mask.shape[0]
    if left_padding:
        pooled = hidden[:, -1]
    else:
        pooled = hidden[torch.arange(hidden.shape[0]), mask.sum(dim=1) - 1]
    if dims is not None:
        pooled = pooled[:, :dims]
    return F.normalize(pooled.float(), p=2, dim=1).numpy()


_REF_CACHE: dict[Path, object] = {}


def _reference_model(path: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import Qwen3Model

    if path not in _REF_CACHE:
        _REF_CACHE[path] = Qwen3Model.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation="eager").eval()
    return _REF_CACHE[path]
