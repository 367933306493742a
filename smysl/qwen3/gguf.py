"""GGUF files (llama.cpp's format, what Ollama stores) as Qwen3-Embedding checkpoints.

Supported: files that llama.cpp's ``convert_hf_to_gguf.py`` (or ``llama-quantize``) writes for
architecture ``qwen3``, with F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q4_K, Q3_K, Q2_K, the legacy Q4_0,
Q4_1, Q5_0 and Q5_1, IQ4_NL / IQ4_XS, and with llama.cpp's gguf-py installed the IQ types
below 4 bits (IQ3_S, IQ3_XXS, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_M, IQ1_S), mixed per tensor as the
``_M`` recipes make them. Quantised blocks are dequantised at load
(:mod:`smysl.qwen3.ggml_quants`), one tensor at a time (in block slices), straight into the
engine dtype, or kept as blocks for ``quantize="int4"`` (:mod:`smysl.qwen3.quantize`). Other
types (TQ1_0, MXFP4 ...) are refused with a clear error before any weight is read.

Layout (v2/v3, little-endian): ``GGUF``, version, tensor count, key/value count; the key/values;
per tensor its name, dims (innermost first: ``[in, out]`` for a weight), type and offset; padding
to ``general.alignment`` (32); the data. The header is parsed here with ``struct`` over a
memory map: the ``gguf`` package's reader builds a numpy view per string and took 7 s on
Qwen3's 151,669 tokens and 151,387 merges on this machine, this reader 0.1 s. Tensor data is
read with plain reads, one tensor at a time (see :func:`read_tensors`).

Qwen3 needs no weight permutation: llama.cpp runs its RoPE NEOX-style (rotate-half, like
transformers), so ``convert_hf_to_gguf.py`` writes q/k as they are (it permutes only for
``llama``-style interleaved RoPE).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smysl.qwen3.hub import Checkpoint, looks_whole_json
from smysl.tokenize import EOS_TOKEN, Tokenizer

if TYPE_CHECKING:
    import torch

    from smysl.qwen3.ggml_quants import QuantTensor

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
ARCH = "qwen3"
_VERSIONS = (2, 3)
_ALIGNMENT = 32

#: GGML tensor types by id (names as llama.cpp spells them, for messages and ``ModelInfo``).
TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
              9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
              15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL",
              21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64",
              28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"}
F32, F16, BF16 = 0, 1, 30
#: The block formats :mod:`smysl.qwen3.ggml_quants` decodes -> (values per block, bytes per
#: block). Here, not there: reading a header (a tokenizer, a supervisor process that serves a
#: GGUF model from an engine process) must not import torch, which that module needs.
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 2, 3, 6, 7, 8, 10, 11, 12, 13, 14
IQ4_NL, IQ4_XS = 20, 23
#: The IQ types below 4 bits: their codes index ggml's grids of 256 to 2,048 vectors
#: (``iq2xxs_grid`` ...), decoded by llama.cpp's own gguf-py (the ``gguf`` extra), not here.
IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M = 16, 17, 22, 18, 21, 19, 29
GRID_BLOCKS = {IQ2_XXS: (256, 66), IQ2_XS: (256, 74), IQ2_S: (256, 82), IQ3_XXS: (256, 98),
               IQ3_S: (256, 110), IQ1_S: (256, 50), IQ1_M: (256, 56)}
GRID_HINT = "pip install 'smysl[gguf]'"
QUANT_BLOCKS = {Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34),
                Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176),
                Q6_K: (256, 210), IQ4_NL: (32, 18), IQ4_XS: (256, 136), **GRID_BLOCKS}
#: Types this loader reads: id -> (elements per block, bytes per block).
BLOCKS = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), **QUANT_BLOCKS}

#: ``general.file_type`` (llama.cpp's ``llama_ftype``) -> the name Ollama and llama.cpp show.
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
              22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
              28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16"}

_STORED = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
#: The file types whose weights are floats, not quantised blocks (never re-quantised:
#: ``quantize="int4"`` keeps them 8-bit weight-only on CPU, bf16 on CUDA).
FLOAT_TYPES = frozenset(_STORED)

#: ``{arch}.pooling_type`` values (llama.cpp's ``llama_pooling_type``).
POOLING = {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}

#: GGUF tensor name (per layer: ``blk.N.`` stripped) -> checkpoint name (``layers.N.`` stripped),
#: as gguf-py's tensor_mapping has them for ``qwen3``.
_GLOBAL = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight"}
_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
          "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
#: The language-model head: embeddings never use it, tied (absent) or not, whatever its type.
_UNUSED = ("output.weight",)

#: GGUF value types: struct format of the fixed-size ones; 8 = string, 9 = array.
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
          11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
          10: "<u8", 11: "<i8", 12: "<f8"}

#: llama.cpp's ``tokenizer.ggml.pre`` -> the pre-tokenizer regex of the Hugging Face tokenizer
#: it stands for (Qwen2/Qwen3's ``tokenizer.json``, byte-level BPE after an isolating split).
PRE_TOKENIZERS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
#: GGUF token types (llama.cpp's ``llama_token_type``).
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED_TOKEN = 1, 3, 4, 5


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file."""

    name: str
    #: Torch order, outermost first (``[out, in]`` for a weight; GGUF stores them reversed).
    shape: tuple[int, ...]
    #: GGML type id (:data:`TYPE_NAMES`).
    type: int
    #: Absolute byte offset of the data in the file, and its size (None: unknown type).
    offset: int
    nbytes: int | None

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")


@dataclass(frozen=True)
class Header:
    """The key/values and tensor table of a GGUF file."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    size: int


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic."""
    try:
        with path.open("rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_header(path: Path) -> Header:
    """Parse the header of ``path``; ``ValueError`` naming the file for anything that is not a
    complete GGUF file (wrong magic or version, truncated header or data).

    One load asks three times (checkpoint, tokenizer, weights; ~0.13 s each for Qwen3's
    vocabulary), so the last two files' headers are kept, keyed by size and modification time
    (a rewritten file is parsed again). Callers must not modify the result."""
    st = path.stat()
    return _read_header(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _read_header(path: Path, size: int, mtime_ns: int) -> Header:
    with path.open("rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise ValueError(f"{path}: not a GGUF file ({size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse(path, mm, size)
            except struct.error:  # struct's words name buffers and offsets, not the file
                raise ValueError(f"{path}: truncated GGUF file: its header runs past its end "
                                 f"({size:,} bytes; an interrupted download or copy?)") from None
            except (UnicodeDecodeError, IndexError) as e:
                raise ValueError(f"{path}: corrupt GGUF header ({e})") from None


def _parse(path: Path, buf: mmap.mmap, size: int) -> Header:
    if buf[:4] != MAGIC:
        raise ValueError(f"{path}: not a GGUF file (starts with {bytes(buf[:4])!r})")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version & 0xFFFF == 0 and version:
        raise ValueError(f"{path}: big-endian GGUF files are not supported")
    if version not in _VERSIONS:
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    if n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise ValueError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        if pos + 8 + n > size:
            raise struct.error(f"string of {n} bytes at offset {pos} runs past the end")
        text = buf[pos + 8: pos + 8 + n].decode("utf-8")
        pos += 8 + n
        return text

    def value(kind: int) -> Any:
        nonlocal pos
        if kind in _FIXED:
            (v,) = struct.unpack_from(_FIXED[kind], buf, pos)
            pos += struct.calcsize(_FIXED[kind])
            return v
        if kind == 8:
            return string()
        if kind != 9:
            raise ValueError(f"{path}: unknown GGUF value type {kind} at offset {pos}")
        item, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item in _NUMPY:  # numbers in one read: token types are 151k int32
            width = np.dtype(_NUMPY[item]).itemsize
            if pos + n * width > size:
                raise struct.error(f"array of {n} items at offset {pos} runs past the end")
            arr = np.frombuffer(buf, dtype=_NUMPY[item], count=n, offset=pos).copy()
            pos += n * width
            return arr.astype(bool) if item == 7 else arr
        return [value(item) for _ in range(n)]

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        metadata[key] = value(kind)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        if n_dims > 8:
            raise ValueError(f"{path}: tensor {name} has {n_dims} dimensions")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        infos.append((name, tuple(reversed(dims)), kind, offset))
    align = int(metadata.get("general.alignment", _ALIGNMENT))
    if align <= 0 or align & (align - 1):
        raise ValueError(f"{path}: general.alignment {align} is not a power of two")
    data = -(-pos // align) * align
    tensors: dict[str, TensorInfo] = {}
    for name, shape, kind, offset in infos:
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = None
        if kind in BLOCKS:
            per, width = BLOCKS[kind]
            if shape and shape[-1] % per:
                raise ValueError(f"{path}: tensor {name} rows of {shape[-1]} are not whole "
                                 f"{TYPE_NAMES[kind]} blocks of {per}")
            nbytes = count // per * width
            if data + offset + nbytes > size:
                raise ValueError(f"{path}: truncated GGUF file: tensor {name} ends at byte "
                                 f"{data + offset + nbytes}, the file has {size} bytes")
        if name in tensors:
            raise ValueError(f"{path}: tensor {name} appears twice")
        tensors[name] = TensorInfo(name, shape, kind, data + offset, nbytes)
    if tensors and data > size:
        raise ValueError(f"{path}: truncated GGUF file (data would start at byte {data}, "
                         f"the file has {size} bytes)")
    return Header(path, version, metadata, tensors, size)


# ---------------------------------------------------------------------- checkpoint
def checkpoint_name(name: str) -> str | None:
    """GGUF tensor name -> the checkpoint name the loader assembles (``layers.3.mlp.up_proj
    .weight``); None for tensors embeddings do not use. ``ValueError`` for unknown names."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    if name in _UNUSED:
        return None
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[3] == "weight" \
            and parts[2] in _LAYER:
        return f"layers.{parts[1]}.{_LAYER[parts[2]]}.weight"
    raise ValueError(f"unexpected tensor {name!r} for a {ARCH} model")


def _float(v: Any) -> float:
    """A float32 key/value as the decimal the converter started from (``1e-06``, not
    ``9.99999997e-07``): the shortest decimal that rounds to the same float32."""
    return float(str(np.float32(v)))


def config_of(header: Header) -> dict[str, Any]:
    """The transformers-style ``config.json`` of a Qwen3 GGUF, from its ``qwen3.*`` keys."""
    meta, path = header.metadata, header.path
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise ValueError(f"{path}: architecture {arch!r} is not {ARCH!r}: smysl runs "
                         "Qwen3-Embedding GGUF files only")

    def need(key: str) -> Any:
        v = meta.get(f"{arch}.{key}")
        if v is None:
            raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
        if isinstance(v, np.ndarray | list):
            raise ValueError(f"{path}: per-layer {arch}.{key} is not supported")
        return v

    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported")
    embed = header.tensors.get("token_embd.weight")
    if embed is None or len(embed.shape) != 2:
        raise ValueError(f"{path}: GGUF file lacks a token_embd.weight matrix")
    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rotary = meta.get(f"{arch}.rope.dimension_count")  # llama.cpp's n_rot; Qwen3 rotates all
    if rotary is not None and int(rotary) != head_dim:
        raise ValueError(f"{path}: {arch}.rope.dimension_count {int(rotary)} is not the head "
                         f"size {head_dim}: partial rotary embeddings are not Qwen3's")
    return {
        "model_type": ARCH,
        "vocab_size": embed.shape[0],
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": _float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": _float(need("rope.freq_base")),
        "max_position_embeddings": int(need("context_length")),
    }


def weight_type(header: Header) -> str:
    """The file's quantisation as llama.cpp and Ollama name it (``Q8_0``, ``F16``, ``Q4_K_M``):
    ``general.file_type``, else the type holding most weight elements."""
    ftype = header.metadata.get("general.file_type")
    if ftype is not None and int(ftype) in FILE_TYPES:
        return FILE_TYPES[int(ftype)]
    counts: dict[str, int] = {}
    for t in header.tensors.values():
        if len(t.shape) == 2:
            counts[t.type_name] = counts.get(t.type_name, 0) + int(np.prod(t.shape))
    return max(counts, key=lambda k: counts[k]) if counts else "F32"


def dequantized_bytes(path: Path, itemsize: int) -> int | None:
    """Bytes the tensors an encoder reads from ``path`` take dequantised to ``itemsize``-byte
    floats; None when none of them is quantised (nothing to keep)."""
    tensors = [t for t in read_header(path).tensors.values() if t.name not in _UNUSED]
    if not any(t.type in QUANT_BLOCKS for t in tensors):
        return None
    return sum(math.prod(t.shape) for t in tensors) * itemsize


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> torch-order shape, for every tensor a Qwen3 encoder needs."""
    h, inter, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    per_layer = {"attn_q": (q, h), "attn_k": (kv, h), "attn_v": (kv, h), "attn_output": (h, q),
                 "attn_q_norm": (d,), "attn_k_norm": (d,), "attn_norm": (h,), "ffn_norm": (h,),
                 "ffn_gate": (inter, h), "ffn_up": (inter, h), "ffn_down": (h, inter)}
    shapes = {"token_embd.weight": (config["vocab_size"], h), "output_norm.weight": (h,)}
    for n in range(config["num_hidden_layers"]):
        shapes.update({f"blk.{n}.{k}.weight": v for k, v in per_layer.items()})
    return shapes


def check_tensors(header: Header, config: dict[str, Any]) -> None:
    """Every tensor known, present, of the shape the metadata implies and of a type this
    loader reads (``ValueError`` naming the first few that are not), before any weight is
    read."""
    path, bad = header.path, []
    shapes = expected_shapes(config)
    for t in header.tensors.values():
        try:
            target = checkpoint_name(t.name)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if target is None:
            continue
        if t.name not in shapes:
            raise ValueError(f"{path}: tensor {t.name} is past the {config['num_hidden_layers']}"
                             " layers the metadata names")
        if t.shape != shapes[t.name]:
            raise ValueError(f"{path}: tensor {t.name} has shape {list(t.shape)}, the metadata "
                             f"implies {list(shapes[t.name])}")
        if t.type not in BLOCKS:
            bad.append(f"{t.name} ({t.type_name})")
    missing = sorted(set(shapes) - set(header.tensors))
    if missing:
        raise ValueError(f"{path}: GGUF file lacks tensors {missing[:8]}")
    if bad:
        raise ValueError(
            f"{path}: tensor types not supported yet: {', '.join(bad[:4])}"
            f"{f' and {len(bad) - 4} more' if len(bad) > 4 else ''}; smysl reads "
            f"{', '.join(TYPE_NAMES[k] for k in BLOCKS)}: use such a GGUF, or the safetensors "
            "checkpoint")
    grids = sorted({t.type_name for t in header.tensors.values()
                    if t.type in GRID_BLOCKS and t.name not in _UNUSED})
    if grids:
        try:
            gguf_py()
        except ImportError as e:
            raise ValueError(f"{path}: its {', '.join(grids)} tensors need {e}") from None


def gguf_py() -> Any:
    """llama.cpp's gguf-py (the ``gguf`` package), which decodes the IQ types' grids; an
    ``ImportError`` naming the install where it is missing (a folder named ``gguf`` in the
    working directory then imports as an empty namespace package)."""
    try:
        import gguf
        from gguf import GGMLQuantizationType, quants  # noqa: F401
    except ImportError as e:
        raise ImportError(f"llama.cpp's gguf-py: {GRID_HINT} ({e})") from e
    return gguf


def check_split(header: Header) -> None:
    """llama.cpp writes a large model as parts (``*-00001-of-00003.gguf``, ``split.count``
    in each header); the loader reads one whole file."""
    count = int(header.metadata.get("split.count", 1) or 1)
    if count > 1:
        part = int(header.metadata.get("split.no", 0)) + 1
        raise ValueError(f"{header.path}: part {part} of a GGUF split into {count} files; "
                         f"merge them into one first (`llama-gguf-split --merge "
                         f"<the first part> merged.gguf`) and pass that")


def check_pooling(header: Header) -> None:
    """Qwen3-Embedding pools the last token. A missing, -1 (unspecified) or 0 (none)
    ``pooling_type`` means that (old conversions wrote none); mean, CLS or rank pooling is
    another model, refused like a sentence-transformers checkpoint without last-token pooling."""
    value = header.metadata.get(f"{ARCH}.pooling_type")
    if value is None:
        return
    value = int(value) - (1 << 32 if int(value) >= 1 << 31 else 0)  # -1 written as a u32
    if value in (-1, 0, 3):
        return
    kind = POOLING.get(value, str(value))
    what = "a reranker" if kind == "rank" else f"{kind} pooling"
    raise ValueError(f"{header.path}: pooling_type {value} ({what}) is not last-token pooling "
                     "(Qwen3-Embedding)")


def check_tokenizer(header: Header) -> None:
    """The file's ``tokenizer.ggml.*`` keys describe a tokenizer this module can build."""
    meta, path = header.metadata, header.path
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    if model is None or "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"{path}: no tokenizer: the GGUF file has no tokenizer.ggml.tokens and "
                         "there is no tokenizer.json next to it")
    if model != "gpt2" or pre not in PRE_TOKENIZERS:
        raise ValueError(f"{path}: tokenizer {model!r} with pre-tokenizer {pre!r} is not "
                         f"supported (gpt2 with {', '.join(PRE_TOKENIZERS)}); put the model's "
                         "tokenizer.json next to the file")
    for key in ("tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        if key not in meta:
            raise ValueError(f"{path}: GGUF tokenizer lacks {key}")
    if EOS_TOKEN not in meta["tokenizer.ggml.tokens"]:
        raise ValueError(f"{path}: GGUF tokenizer has no {EOS_TOKEN} token")


def read_checkpoint(path: Path, name: str | None = None) -> Checkpoint:
    """A GGUF file as a :class:`~smysl.qwen3.hub.Checkpoint`; ``ValueError`` naming the file
    for anything unsupported (architecture, tensor types, pooling, tokenizer), before any
    weight is read."""
    header = read_header(path)
    check_split(header)  # first: a part lacks most tensors, and said only that
    check_pooling(header)  # then: a reranker's file also has a tensor no embedder has
    config = config_of(header)
    check_tensors(header, config)
    sidecar = path.parent / "tokenizer.json"
    if sidecar.is_file() and not looks_whole_json(sidecar):  # it is read instead of the file's
        raise ValueError(f"{sidecar}: empty or cut short; it takes the place of {path.name}'s "
                         "own tokenizer: copy it again, or remove it")
    if not sidecar.is_file():
        check_tokenizer(header)
    kind = weight_type(header)
    # what config.json would say (the engine's dtype="auto" reads it); quantised blocks are
    # dequantised as a bf16 release is computed: bf16 where the CPU has it natively, else
    # float32 (they defaulted to float32 everywhere, "stored in an unknown dtype", half the
    # speed the docs give, and the keep-blocks rule sized them at 4 bytes a weight)
    config["torch_dtype"] = _STORED.get(kind, "bfloat16")
    return Checkpoint(root=path, name=name or path.stem, config=config, weights=(path,),
                      tokenizer_file=sidecar if sidecar.is_file() else path, format="gguf",
                      weight_type=kind)


# ---------------------------------------------------------------------- tokenizer
def tokenizer_json(header: Header) -> dict[str, Any]:
    """The Hugging Face ``tokenizer.json`` that the file's ``tokenizer.ggml.*`` keys describe:
    NFC, the pre-tokenizer's split, byte-level BPE over the NORMAL tokens and merges, and the
    CONTROL (special) and USER_DEFINED tokens as added tokens with their ids. A
    ``<|endoftext|>``-appending post-processor when ``add_eos_token`` says so (as Qwen3-Embedding's
    own tokenizer does); otherwise :class:`~smysl.tokenize.Tokenizer` appends it."""
    check_tokenizer(header)
    meta = header.metadata
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = [int(t) for t in meta["tokenizer.ggml.token_type"]]
    if len(types) != len(tokens):
        raise ValueError(f"{header.path}: {len(tokens)} tokens but {len(types)} token types")
    vocab = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == _NORMAL}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": k == _CONTROL}
             for i, (t, k) in enumerate(zip(tokens, types, strict=True))
             if k in (_CONTROL, _USER_DEFINED)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    post: dict[str, Any] = byte_level
    eos = tokens.index(EOS_TOKEN)
    if bool(meta.get("tokenizer.ggml.add_eos_token", False)):
        eos_id = int(meta.get("tokenizer.ggml.eos_token_id", eos))
        if eos_id == eos:
            tok = {"id": EOS_TOKEN, "type_id": 0}
            post = {"type": "Sequence", "processors": [byte_level, {
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": tok}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": tok},
                         {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": tok | {"type_id": 1}}],
                "special_tokens": {EOS_TOKEN: {"id": EOS_TOKEN, "ids": [eos],
                                               "tokens": [EOS_TOKEN]}}}]}
        else:  # llama.cpp would append that token; Qwen3-Embedding pools on <|endoftext|>
            log.warning("%s: add_eos_token names token %d, not %s; appending %s", header.path,
                        eos_id, EOS_TOKEN, EOS_TOKEN)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRE_TOKENIZERS[meta["tokenizer.ggml.pre"]]},
             "behavior": "Isolated", "invert": False}, byte_level]},
        "post_processor": post,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": list(meta["tokenizer.ggml.merges"])},
    }


def load_tokenizer(ckpt: Checkpoint, max_tokens: int, rows: int | None = None) -> Tokenizer:
    """The tokenizer of a GGUF checkpoint: ``tokenizer.json`` next to the file when there is
    one, else built from the file's metadata (:func:`tokenizer_json`). ``rows``: see
    :class:`~smysl.tokenize.Tokenizer`."""
    if ckpt.tokenizer_file != ckpt.root:
        tok = Tokenizer(ckpt.tokenizer_file, max_tokens, rows=rows)
        tokens = read_header(ckpt.root).metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list) and tokens:
            # the file's own vocabulary, where it has one, names the same tokens: another
            # model's tokenizer.json in the folder would give wrong ids without a word
            n = min(len(tokens), tok.vocab_size)
            wrong = [i for i in range(0, n, max(1, n // 512))
                     if tok.raw.id_to_token(i) != tokens[i]]
            if wrong:
                i = wrong[0]
                raise ValueError(f"{ckpt.tokenizer_file} is not the tokenizer of {ckpt.root}: "
                                 f"token {i} is {tok.raw.id_to_token(i)!r} there, {tokens[i]!r} "
                                 "in the GGUF file; remove it (the file's own tokenizer is used)")
        return tok
    text = json.dumps(tokenizer_json(read_header(ckpt.root)), ensure_ascii=False)
    return Tokenizer(ckpt.root, max_tokens, json_text=text, rows=rows)


# ---------------------------------------------------------------------- weights
def read_tensors(path: Path, dtype: torch.dtype, keep_blocks: bool = False
                 ) -> Iterator[tuple[str, torch.Tensor | QuantTensor]]:
    """Yield (checkpoint name, tensor) for each tensor embeddings use, in file order: matrices
    converted to ``dtype`` (``keep_blocks``: quantised ones as :class:`QuantTensor` instead),
    1-D tensors (norms, F32 in converted files) in float32; each a fresh CPU tensor.
    ``output.weight`` is skipped.

    Each tensor is read with plain reads into its own buffer, not through a map of the file:
    mapped pages once touched count in the process's resident memory until unmapped, so
    reading an 8B Q4_K_M file through one map held all 4.3 GB of it beside the weights made
    from it (peak 10.6 GB instead of the weights alone)."""
    import torch

    from smysl.qwen3.ggml_quants import QuantTensor

    header = read_header(path)
    check_tensors(header, config_of(header))
    with path.open("rb", buffering=0) as f:
        for t in sorted(header.tensors.values(), key=lambda t: t.offset):
            target = checkpoint_name(t.name)
            if target is None:
                continue
            assert t.nbytes is not None  # check_tensors: a type in BLOCKS
            raw = np.empty(t.nbytes, dtype=np.uint8)
            f.seek(t.offset)
            if f.readinto(raw.data) != t.nbytes:
                raise ValueError(f"{path}: truncated file (tensor {t.name})")
            want = dtype if len(t.shape) > 1 else torch.float32
            if t.name == "token_embd.weight" and dtype == torch.float32 and t.type in (F16, BF16):
                # as stored: the loader keeps a half-precision table when computing in float32
                # (its rows widen exactly); widened here, the 8B's took 2.5 GB, not 1.2
                want = torch.float16 if t.type == F16 else torch.bfloat16
            tensor: torch.Tensor | QuantTensor
            if keep_blocks and t.type in QUANT_BLOCKS and len(t.shape) == 2:
                data = torch.from_numpy(raw).view(t.shape[0], -1)
                tensor = QuantTensor(t.type, data, (t.shape[0], t.shape[1]))
            else:
                tensor = _convert(raw, t, want)
            del raw
            yield target, tensor


def _convert(raw: np.ndarray, t: TensorInfo, dtype: torch.dtype) -> torch.Tensor:
    """Bytes of tensor ``t`` -> a new ``[shape]`` tensor in ``dtype``."""
    import torch

    from smysl.qwen3.ggml_quants import dequantize

    if t.type in QUANT_BLOCKS:
        return dequantize(torch.from_numpy(raw), t.type, t.shape, dtype)
    src = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}[t.type]
    view = torch.from_numpy(raw).view(src).reshape(t.shape)
    return view.to(dtype, copy=True)
