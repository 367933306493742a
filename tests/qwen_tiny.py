"""Tiny random Qwen3 checkpoints and the transformers reference recipe (shared test helpers).

Checkpoints are written by transformers (``Qwen3Model`` / ``Qwen3ForCausalLM`` + safetensors) with
the real Qwen3 tokenizer from ``../shared/qwen3-tokenizer``, in both tokenizer variants: the base
one (post-processor adds nothing) and the embedding one (appends ``<|endoftext|>``).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
#: ../shared beside the checkout, or a copy inside it (the GPU machine gets only the checkout)
SHARED = _ROOT / "shared" if (_ROOT / "shared").is_dir() else _ROOT.parent / "shared"
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
               max_positions: int = 512, hidden: int = 64, vocab_size: int = 151669) -> Tiny:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=2,
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


def build_tiny_reranker(root: Path, *, tied: bool = True, seed: int = 0, shard: bool = False,
                        max_positions: int = 512) -> Tiny:
    """A tiny random Qwen3-Reranker: ``Qwen3ForCausalLM`` with the base tokenizer (no EOS
    appended), as the real repos ship it. The "yes"/"no" head rows are scaled down so that
    P(yes) stays away from 0 and 1 (random full-size rows saturate it and tie the ranking)."""
    import torch
    from safetensors.torch import load_file, save_file

    t = build_tiny(root, tied=tied, causal_lm=True, eos_tokenizer=False, st_files=False,
                   seed=seed, shard=shard, max_positions=max_positions)
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    for f in sorted(root.glob("*.safetensors")):
        weights = load_file(f)
        if head in weights:
            w = weights[head]
            gen = torch.Generator().manual_seed(seed)
            for row in (YES, NO):
                w[row] = torch.randn(w.shape[1], generator=gen) * 0.02
            save_file(weights, f, metadata={"format": "pt"})
    return t


YES, NO = 9693, 2152
_LM_CACHE: dict[Path, Any] = {}
#: The Qwen3-Reranker model card's prompt pieces (huggingface.co/Qwen/Qwen3-Reranker-0.6B,
#: "Transformers Usage"), copied here independently of smysl's own constants.
_REF_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on "
               "the Query and the Instruct provided. Note that the answer can only be \"yes\" "
               "or \"no\".<|im_end|>\n<|im_start|>user\n")
_REF_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
_REF_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def reference_rerank(path: Path, pairs: list[tuple[str, str]], instruction: str | None = None,
                     max_length: int = 8192) -> np.ndarray:
    """The model card's reference recipe, as written there: format_instruction, tokenise with
    ``truncation='longest_first'`` to ``max_length`` minus prefix and suffix, left padding,
    full ``Qwen3ForCausalLM`` logits at the last position, log_softmax over [no, yes], exp."""
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    if path not in _LM_CACHE:
        _LM_CACHE[path] = Qwen3ForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation="eager").eval()
    model = _LM_CACHE[path]
    tok = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    prefix = tok.encode(_REF_PREFIX, add_special_tokens=False)
    suffix = tok.encode(_REF_SUFFIX, add_special_tokens=False)
    task = instruction if instruction is not None else _REF_TASK
    texts = [f"<Instruct>: {task}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    inputs = tok(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                 max_length=max_length - len(prefix) - len(suffix))
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix + ele + suffix
    batch = tok.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1, :]  # type: ignore[operator]
    scores = torch.stack([logits[:, tok.convert_tokens_to_ids("no")],
                          logits[:, tok.convert_tokens_to_ids("yes")]], dim=1)
    return torch.nn.functional.log_softmax(scores, dim=1)[:, 1].exp().numpy()


# ---------------------------------------------------------------------- GGUF (issue 14)
#: GGUF token types (llama.cpp's llama_token_type).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@functools.cache
def gguf_vocab(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges of the real Qwen3 tokenizer as convert_hf_to_gguf.py's
    ``get_vocab_base`` writes them: added tokens that are special or look special (``<|...|>``)
    CONTROL, other added tokens USER_DEFINED, ids past the tokenizer ``[PAD{i}]`` UNUSED.
    Made once per process (callers only read the lists)."""
    tok = json.loads((require_tokenizer() / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok["added_tokens"]}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            a = added[i]
            looks = a["content"].startswith("<|") and a["content"].endswith("|>")
            tokens.append(a["content"])
            types.append(CONTROL if a["special"] or looks else USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def gguf_writer(cfg: dict, out: Path, *, name: str, ftype: str = "F16", tokenizer: bool = True,  # type: ignore[no-untyped-def]
                add_eos: bool | None = None, pooling: int | None = 3, arch: str = "qwen3"):
    """A ``gguf.GGUFWriter`` for ``out`` holding the metadata convert_hf_to_gguf.py writes for
    a Qwen3-Embedding ``config.json`` (see :func:`write_gguf`); tensors are the caller's."""
    import gguf

    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(name)
    w.add_file_type(getattr(gguf.LlamaFileType, "ALL_F32" if ftype == "F32" else
                            f"MOSTLY_{ftype}"))
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base((cfg.get("rope_parameters") or cfg)["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    if pooling is not None:
        # u32, as gguf-py's add_pooling_type writes it and llama.cpp requires (it refuses an
        # i32); -1 (unset) wraps around, as old conversions stored it
        w.add_uint32(f"{arch}.pooling_type", pooling & 0xFFFFFFFF)
    if tokenizer:
        tokens, types, merges = gguf_vocab(cfg["vocab_size"])
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(EOS)
        w.add_eos_token_id(EOS)
        w.add_pad_token_id(EOS)
        w.add_add_bos_token(False)
        if add_eos is not None:
            w.add_add_eos_token(add_eos)
    return w


def write_gguf(src: Path, out: Path, *, ftype: str = "F16", tokenizer: bool = True,
               add_eos: bool | None = None, pooling: int | None = 3, arch: str = "qwen3",
               type_of: dict[str, str] | None = None, dequantized_to: Path | None = None,
               extra_tensors: dict[str, np.ndarray] | None = None,
               extra_u32: dict[str, int] | None = None) -> Path:
    """Write the tiny safetensors checkpoint in ``src`` as a GGUF file, the way llama.cpp's
    ``convert_hf_to_gguf.py`` does for Qwen3-Embedding: ``qwen3.*`` hyperparameters,
    ``tokenizer.ggml.*`` (gpt2 model, qwen2 pre-tokenizer), tensor names from gguf-py's own
    name map, q/k as they are (its Qwen3Model permutes nothing), 1-D tensors F32 and 2-D
    tensors in ``ftype`` (F32, F16, BF16, Q8_0), ``output.weight`` only for an untied
    ``lm_head``.

    ``add_eos``: ``tokenizer.ggml.add_eos_token`` (None: absent, as in old conversions);
    ``pooling``: ``qwen3.pooling_type`` (None: absent); ``type_of``: per-tensor type overrides
    (mixed files). The gguf package cannot quantise to K-quants (Q4_K ...): Q6_K tensors are
    quantised by :func:`quantize_q6_k`, the others get random blocks whose float16 scales are
    set to small values, a valid random model.
    ``extra_tensors`` (float32, as they are) and ``extra_u32`` (metadata) are added as given
    (what other conversions write: a reranker's ``cls.output.weight``, ``rope.dimension_count``).
    ``dequantized_to``: also write a copy of ``src`` whose weights are exactly what the GGUF
    file holds, dequantised by gguf-py (llama.cpp's reference): the checkpoint the GGUF's
    vectors must equal.
    """
    import gguf
    from safetensors.torch import load_file

    cfg = json.loads((src / "config.json").read_text())
    state: dict = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, cfg["num_hidden_layers"])
    w = gguf_writer(cfg, out, name=src.name, ftype=ftype, tokenizer=tokenizer, add_eos=add_eos,
                    pooling=pooling, arch=arch)
    for key, value in (extra_u32 or {}).items():
        w.add_uint32(key, value)
    for gname, data in (extra_tensors or {}).items():
        w.add_tensor(gname, data.astype(np.float32))
    rng = np.random.default_rng(0)
    held = {}  # what the file holds, as float32 (only for dequantized_to)
    for key, t in state.items():
        gname = names.get_name(key, try_suffixes=(".weight",))
        if gname is None:
            raise ValueError(f"gguf-py has no qwen3 name for {key}")
        data = t.float().numpy()
        qtype = getattr(gguf.GGMLQuantizationType,
                        (type_of or {}).get(gname, "F32" if data.ndim == 1 else ftype))
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            packed = gguf.quants.quantize(data, qtype)
            w.add_tensor(gname, packed)
            if dequantized_to is not None:
                held[key] = packed.astype(np.float32)
            continue
        try:
            packed = gguf.quants.quantize(data, qtype)
        except NotImplementedError:  # K-quants: only llama.cpp's C quantizer makes them
            packed = (quantize_q6_k(data) if qtype == gguf.GGMLQuantizationType.Q6_K
                      else random_blocks(data.shape, qtype, rng))
        w.add_tensor(gname, packed, raw_dtype=qtype)
        if dequantized_to is not None:
            held[key] = gguf.quants.dequantize(packed, qtype).reshape(data.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if dequantized_to is not None:
        import torch
        from safetensors.torch import save_file

        shutil.copytree(src, dequantized_to)
        for f in dequantized_to.glob("*.safetensors"):
            f.unlink()
        weights = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in held.items()}
        save_file(weights, dequantized_to / "model.safetensors", metadata={"format": "pt"})
        (dequantized_to / "model.safetensors.index.json").unlink(missing_ok=True)
        cfg["torch_dtype"] = cfg["dtype"] = "float32"
        (dequantized_to / "config.json").write_text(json.dumps(cfg))
    return out


#: Byte offsets of the float16 scales in each block (ggml-common.h).
_K_SCALES = {"Q8_0": (0,), "Q6_K": (208,), "Q5_K": (0, 2), "Q4_K": (0, 2), "Q3_K": (108,),
             "Q2_K": (80, 82), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
             "IQ4_NL": (0,), "IQ4_XS": (0,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,),
             "IQ3_XXS": (0,), "IQ3_S": (0,), "IQ1_S": (0,)}


def set_iq1_m_scale(blocks: np.ndarray, d: np.ndarray) -> None:
    """Write float16 ``d`` ([n]) into IQ1_M blocks ([n, 56] uint8): its four nibbles are the
    top nibbles of the four uint16 ``scales`` (bytes 48-55), lowest first."""
    sc = blocks[:, 48:56].copy().view(np.uint16)  # [n, 4]
    bits = d.astype(np.float16).view(np.uint16)
    for k in range(4):
        sc[:, k] = (sc[:, k] & 0x0FFF) | (((bits >> (4 * k)) & 0xF) << 12)
    blocks[:, 48:56] = sc.view(np.uint8)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """``x`` ([rows, cols], cols % 256 == 0) as Q6_K blocks, the way llama.cpp's reference
    quantizer does it without its error search: per 16 values the largest-magnitude one maps
    to -32; the 16 scales as int8 of a float16 ``d`` (the largest to -128). Sub-block scales
    that follow the data (unlike :func:`random_blocks`'), for tests of what depends on them."""
    v = x.astype(np.float32).reshape(-1, 16, 16)  # [blocks, sub-blocks, 16]
    idx = np.abs(v).argmax(-1)[..., None]
    scale = -np.take_along_axis(v, idx, -1)[..., 0] / 32  # [blocks, 16]
    top = np.take_along_axis(scale, np.abs(scale).argmax(-1)[:, None], -1)  # [blocks, 1]
    d = np.where(top != 0, -top / 128, 0).astype(np.float16)
    df = d.astype(np.float32)
    sc = np.where(df != 0, np.round(scale / np.where(df != 0, df, 1)), 0).clip(-128, 127)
    step = (df * sc)[..., None]
    q = np.where(step != 0, np.round(v / np.where(step != 0, step, 1)), 0).clip(-32, 31)
    u = (q.reshape(-1, 2, 4, 32) + 32).astype(np.uint8)  # [blocks, half, run, 32]
    low, high = u & 15, u >> 4
    ql = np.concatenate([low[:, :, 0] | low[:, :, 2] << 4, low[:, :, 1] | low[:, :, 3] << 4], 2)
    qh = high[:, :, 0] | high[:, :, 1] << 2 | high[:, :, 2] << 4 | high[:, :, 3] << 6
    out = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64),
                          sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(-1, 2)], 1)
    return out.reshape(x.shape[0], -1)


def random_blocks(shape: tuple[int, ...], qtype, rng) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Random blocks of a quantised type for a ``shape`` tensor: random bits, float16 scales
    in +-0.002 (weights of a few hundredths, like a trained layer's; Q8_0 up to 0.25)."""
    import gguf

    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    blocks = rng.integers(0, 256, size=byte_shape, dtype=np.uint8)
    width = gguf.GGML_QUANT_SIZES[qtype][1]
    view = blocks.reshape(-1, width)
    for off in _K_SCALES.get(qtype.name, ()):
        d = rng.uniform(-0.002, 0.002, size=view.shape[0]).astype(np.float16)
        view[:, off : off + 2] = d.view(np.uint8).reshape(-1, 2)
    if qtype.name == "IQ1_M":
        set_iq1_m_scale(view, rng.uniform(-0.002, 0.002, size=view.shape[0]))
    return blocks


def random_gguf(cfg: dict, out: Path, *, recipe: str = "Q4_K_M", seed: int = 0) -> Path:
    """A Qwen3-Embedding GGUF of random weights for ``cfg`` (real shapes, for benchmarks) with
    llama.cpp's real tokenizer metadata, typed like ``recipe``: ``Q8_0`` (every matrix), or
    ``Q4_K_M`` (Q4_K, but attn_v and ffn_down Q6_K in every other layer, as llama.cpp's recipe
    gives more bits to about half of those). Norms are F32 ones."""
    import gguf

    from smysl.qwen3.gguf import expected_shapes

    rng = np.random.default_rng(seed)
    w = gguf_writer(cfg, out, name=out.stem, ftype=recipe)
    for name, shape in expected_shapes(cfg).items():
        if len(shape) == 1:
            w.add_tensor(name, np.ones(shape, dtype=np.float32))
            continue
        kind = "Q8_0" if recipe == "Q8_0" else "Q4_K"
        parts = name.split(".")
        if recipe == "Q4_K_M" and parts[0] == "blk" and int(parts[1]) % 2 == 0 \
                and parts[2] in ("attn_v", "ffn_down"):
            kind = "Q6_K"
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        w.add_tensor(name, random_blocks(shape, qtype, rng), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def sdpa_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal: bool):  # type: ignore[no-untyped-def]
    """The varlen kernels' contract, one SDPA call per sequence (CPU stand-in)."""
    import torch
    import torch.nn.functional as F

    out = []
    for i in range(len(cu_q) - 1):
        qs, ks, vs = (x[int(c[i]) : int(c[i + 1])] for x, c in ((q, cu_q), (k, cu_k),
                                                                 (v, cu_k)))
        assert len(qs) <= max_q and len(ks) <= max_k, "max_q/max_k below a sequence's length"
        assert len(qs) > 0 and len(ks) > 0, "empty sequence"
        o = F.scaled_dot_product_attention(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None],
                                           vs.transpose(0, 1)[None], is_causal=causal,
                                           enable_gqa=True)
        out.append(o[0].transpose(0, 1))
    return torch.cat(out)


class QueuedEngine:
    """A CPU engine with a CUDA engine's timing (``queues``): ``submit`` returns at once, the
    pass runs when its rows are waited for. ``events`` records each ("submit n", "wait n",
    and "done n" once computed); ``fail`` names passes (by submit order) that raise when
    submitted or when waited for."""

    queues = True

    def __init__(self, engine: object,
                 fail: dict[int, tuple[str, Exception]] | None = None) -> None:
        self.engine = engine
        self.fail = fail or {}
        self.events: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    def in_flight(self) -> list[int]:
        """Passes submitted and not yet computed, after each event."""
        counts, n = [], 0
        for e in self.events:
            n += 1 if e.startswith("submit") else -1 if e.startswith("done") else 0
            counts.append(n)
        return counts

    def start(self, batch: list[list[int]], heads: list[int] | None = None) -> object:
        return self.submit(batch, heads)  # a CUDA engine's: submit returns at once

    def submit(self, batch: list[list[int]], heads: list[int] | None = None) -> object:
        n = len([e for e in self.events if e.startswith("submit")])
        self.events.append(f"submit {n}")
        when, error = self.fail.get(n, ("", None))
        if when == "submit":
            raise error  # type: ignore[misc]

        def rows() -> np.ndarray:
            self.events.append(f"wait {n}")
            try:
                if when == "wait":
                    raise error  # type: ignore[misc]
                return self.engine.forward(batch, heads)  # type: ignore[attr-defined]
            finally:
                self.events.append(f"done {n}")

        from smysl.base import Pending

        return Pending(rows, lambda: self.events.append(f"cancel {n}"))


def refused(path: Path, match: str, named: Path | None = None) -> None:
    """``path`` (a checkpoint directory or GGUF file) is refused by ``read_checkpoint`` (no
    weight read) and by every loader, with a message matching ``match`` that names the file
    at fault (``named``, default ``path``)."""
    import pytest

    import smysl
    from smysl import Embedder
    from smysl.qwen3.hub import read_checkpoint

    for load in (read_checkpoint, lambda p: Embedder.load(str(p), device="cpu"),
                 lambda p: smysl.load(str(p), device="cpu")):
        with pytest.raises(ValueError, match=match) as err:
            load(path)
        assert str(named or path) in str(err.value)
