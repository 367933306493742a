"""Load safetensors weights into :class:`~smysl.qwen3.model.Qwen3Encoder` without doubling memory.

The model is built on the meta device and each tensor is read from its file with plain reads
(no mmap: mapped pages would count as resident until the file is closed), converted to the
target dtype/device and assigned in place. Peak memory is the final model plus the largest
single tensor, or one layer's q/k/v or gate/up parts while they are fused.
"""

from __future__ import annotations

import json
import re
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smysl.qwen3.ggml_quants import QuantStack, QuantTensor, Weight, bad_block
from smysl.qwen3.hub import Checkpoint, safetensors_header
from smysl.qwen3.model import Linear, Qwen3Config, Qwen3Encoder

# Checkpoint parts that are fused into one weight here: fused name -> parts in order.
_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
_PART_OF = {part: (fused, i) for fused, parts in _FUSED.items() for i, part in enumerate(parts)}
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)\.weight$")
_IGNORED = ("lm_head.", "rotary_emb.")


_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
              "F64": torch.float64}


def read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from a safetensors file one tensor at a time, in file order."""
    with path.open("rb") as f:
        header, base = safetensors_header(f, path)
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in _ST_DTYPES:
                raise ValueError(f"{path}: {name} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            f.seek(base + start)
            buf = bytearray(end - start)
            if f.readinto(buf) != len(buf):
                raise ValueError(f"{path}: truncated file (tensor {name})")
            dt = _ST_DTYPES[info["dtype"]]
            t = torch.frombuffer(buf, dtype=dt) if buf else torch.empty(0, dtype=dt)
            yield name, t.reshape(info["shape"])


def load_encoder(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype,
                 linear: LinearFactory | None = None, keep_blocks: bool = False
                 ) -> Qwen3Encoder:
    """Build the encoder of ``ckpt`` on ``device`` with weights in ``dtype``; ``linear``: see
    :func:`build_encoder`; ``keep_blocks``: a GGUF file's quantised matrices reach it (and the
    embedding table) as their blocks, not dequantised."""

    def tensors() -> Iterator[tuple[str, torch.Tensor | QuantTensor]]:
        if ckpt.format == "gguf":  # matrices dequantised into ``dtype`` (or kept) as read
            from smysl.qwen3.gguf import read_tensors

            yield from read_tensors(ckpt.root, dtype, keep_blocks)
            return
        for path in ckpt.weights:
            yield from read_safetensors(path)

    try:
        return build_encoder(ckpt.config, tensors(), device, dtype, linear)
    except (ValueError, KeyError, json.JSONDecodeError, struct.error) as e:
        where = str(ckpt.root)
        raise ValueError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


#: What :func:`build_encoder` calls to make each linear layer from its (fused) weight.
LinearFactory = Callable[[Weight], nn.Module]


def _join(parts: list[torch.Tensor | QuantTensor], dtype: torch.dtype) -> Weight:
    """Row-wise concatenation of a fused weight's parts: as blocks when all are quantised
    (a :class:`QuantStack` when their types differ), else as ``dtype`` tensors (quantised
    parts dequantised)."""
    quant = [p for p in parts if isinstance(p, QuantTensor)]
    if len(quant) == len(parts):
        return QuantTensor.cat(quant)
    # dequantised parts join the float ones where those are (the GPU, loading for CUDA)
    device = next(p.device for p in parts if isinstance(p, torch.Tensor))
    return torch.cat([p.dequantize(dtype).to(device) if isinstance(p, QuantTensor) else p
                      for p in parts])


def check_finite(name: str, tensor: torch.Tensor | QuantTensor) -> None:
    """Refuse a weight holding NaN or inf (a damaged download or conversion): every input
    would compute NaN, reported per request as float16's overflow. ``aminmax`` propagates
    NaN and reads ~30 GB/s on two EPYC cores (an 8B's bf16 weights: ~0.5 s); a GGUF matrix
    kept as blocks has its float16 scales checked (docs/benchmarks.md)."""
    if isinstance(tensor, QuantTensor):
        bad = bad_block(tensor.data, tensor.kind)
        if bad is not None:
            raise ValueError(f"{name}: block {bad[1]} of row {bad[0]} has a NaN or inf scale: "
                             "the file is damaged; download it again")
        return
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return
    lo, hi = torch.aminmax(tensor)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        at = (~torch.isfinite(tensor)).nonzero()[0]  # the first bad element's index
        where = ", ".join(str(int(i)) for i in at)
        raise ValueError(f"{name} holds NaN or inf (first at [{where}]): the checkpoint is "
                         "damaged; download or convert it again")


def build_encoder(config: dict[str, Any],
                  tensors: Iterable[tuple[str, torch.Tensor | QuantTensor]],
                  device: torch.device, dtype: torch.dtype,
                  linear: LinearFactory | None = None) -> Qwen3Encoder:
    """Build an encoder from a config dict and (name, tensor) pairs in checkpoint naming
    (``[model.]layers.N.self_attn.q_proj.weight`` ...), e.g. a transformers state dict.

    ``linear``: builds the module that replaces each linear layer from its (fused) ``dtype``
    weight as soon as that weight is complete, e.g. :class:`~smysl.qwen3.quantize.Int8Linear`:
    quantised layers are made while loading, so the peak is the quantised model plus one
    layer's float weights, never the whole float model. A :class:`QuantTensor` (GGUF blocks)
    goes to ``linear`` as it is (parts of a fused weight of one type are joined as blocks);
    as the embedding table it becomes a :class:`~smysl.qwen3.quantize.QuantEmbedding`
    (on a GPU only where its blocks decode there: :attr:`QuantTensor.decodes_anywhere`);
    anywhere else it is dequantised."""
    cfg = Qwen3Config.from_dict(config)
    with torch.device("meta"):
        model = Qwen3Encoder(cfg)
    params = dict(model.named_parameters())
    pending: dict[str, dict[int, torch.Tensor | QuantTensor]] = defaultdict(dict)
    loaded: set[str] = set()

    def assign(name: str, tensor: Weight) -> None:
        if name not in params:
            raise ValueError(f"unexpected weight {name!r}")
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, config implies "
                             f"{tuple(params[name].shape)}")
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name)
        parent, _, child = mod_name.rpartition(".")
        if linear is not None and isinstance(module, Linear):
            setattr(model.get_submodule(parent), child, linear(tensor))
        elif (isinstance(tensor, QuantTensor) and name == "embed_tokens.weight"
              and (device.type == "cpu" or tensor.decodes_anywhere)):
            from smysl.qwen3.quantize import QuantEmbedding

            model.embed_tokens = QuantEmbedding(tensor.to(device), torch.float32)
        else:
            if isinstance(tensor, QuantTensor | QuantStack):  # dequantised on the CPU
                tensor = tensor.dequantize(dtype).to(device)
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        loaded.add(name)

    for key, raw in tensors:
        name = key.removeprefix("model.")
        if name.startswith(_IGNORED):
            continue
        # Norm weights stay float32 (lossless; cast per use like the reference does). A
        # half-precision embedding table stays as stored when computing in float32: the rows
        # it gives widen exactly, at half the memory (the 8B's table: 1.2 GB instead of 2.5).
        want = torch.float32 if name.endswith("norm.weight") else dtype
        check_finite(key, raw)
        tensor: torch.Tensor | QuantTensor = raw
        if isinstance(raw, torch.Tensor):
            if name == "embed_tokens.weight" and dtype == torch.float32 and raw.dtype in (
                    torch.bfloat16, torch.float16):
                want = raw.dtype
            tensor = raw.to(device=device, dtype=want)
        m = _LAYER_KEY.match(name)
        if m and m.group(2) in _PART_OF:
            fused, idx = _PART_OF[m.group(2)]
            full = f"layers.{m.group(1)}.{fused}.weight"
            pending[full][idx] = tensor
            if len(pending[full]) == len(_FUSED[fused]):
                parts = pending.pop(full)
                assign(full, _join([parts[i] for i in range(len(parts))], dtype))
            continue
        assign(name, tensor)
    missing = sorted(set(params) - loaded) + sorted(pending)
    if missing:
        raise ValueError(f"checkpoint lacks weights {missing[:8]}")
    model.inv_freq = model.inv_freq.to(device)  # made on the CPU by the constructor
    model.dtype = dtype
    return model.eval()
