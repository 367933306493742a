"""Quantised linear layers for CPU: int8 dynamic (fbgemm), and the int4 layers of
``quantize="int4"`` (torch's weight-only int4/int8 kernels, bf16 activations).

int8 dynamic (``quantize="int8"``):

Weights are quantised once, symmetric per output channel; activations are quantised per call
(per tensor, full 8-bit range). Norms, RoPE, attention and the residual stream stay float32.

On AVX2 without VNNI, fbgemm multiplies u8 x s8 pairs into saturating 16-bit sums; the usual
cure, a 7-bit activation range ("reduce_range"), measured *worse* here (min cosine to fp32 on
the benchmark corpus 0.9913 vs 0.9964 with 8 bits, 0.6B shape): saturation needs two adjacent
near-extreme products and is rarer than the precision lost to a 7-bit range.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from smysl.qwen3.ggml_quants import Q4_K, QuantTensor, q4_k_groups
from smysl.qwen3.model import pad_rows


class Int8Linear(nn.Module):
    """Drop-in for :class:`smysl.qwen3.model.Linear` holding a prepacked int8 weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float().cpu()  # [out, in]
        scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # deprecated in torch, still the fbgemm entry point
            warnings.simplefilter("ignore", UserWarning)
            wq = torch.quantize_per_channel(w, scales, zeros, axis=0, dtype=torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(wq, None)
        self.out_features, self.in_features = w.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(pad_rows(x.float()), self.packed, False)
        return y[: x.shape[0]]


def int8_linear() -> type[Int8Linear]:
    """The int8 layer constructor, with fbgemm's x86 engine selected (loaders pass it on)."""
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    return Int8Linear


# ---------------------------------------------------------------------------- 4-bit weights
#: Columns per int4 group: a Q4_K sub-block, and the smallest group torch's CPU kernel takes.
GROUP = 32
#: Rows packed at a time (a multiple of the kernel's 64-row blocks).
PACK_ROWS = 2048


def int4_fits(shape: tuple[int, ...]) -> bool:
    """Whether torch's CPU int4 kernel takes an ``[out, in]`` weight (out % 16, in % 32)."""
    return len(shape) == 2 and shape[0] % 16 == 0 and shape[1] % GROUP == 0


class Int4Linear(nn.Module):
    """4-bit weights in groups of 32 input columns, ``w = (q - 8) * scale + zero`` per group
    (torch's ``_weight_int4pack_mm_for_cpu``; scale and zero in bf16, activations bf16).

    From a Q4_K GGUF tensor (:meth:`from_q4_k`) the groups are the file's own sub-blocks, so
    only the bf16 rounding of each group's scale and zero is added; from float weights
    (:meth:`from_float`) each group is quantised over its min..max.
    """

    def __init__(self, chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 shape: tuple[int, int]) -> None:
        """``chunks``: (q [rows, in] int in 0..15, scale and mins [rows, in / 32]) for
        consecutive row ranges of :data:`PACK_ROWS` (the last may be shorter), ``w = scale * q
        - mins``. The kernel packs blocks of 64 rows independently, so packing chunk by chunk
        is packing the whole, with one chunk's int32 codes in memory instead of the layer's
        (a gate|up of the 8B: 32 MB instead of 400 MB)."""
        super().__init__()
        self.out_features, self.in_features = shape
        packed, scale_zero = [], []
        for q, scale, mins in chunks:
            packed.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                q.to(torch.int32), 2))
            zero = 8 * scale - mins  # the kernel's (q - 8) * scale + zero form
            scale_zero.append(torch.stack([scale.t(), zero.t()], -1).to(torch.bfloat16))
        self.packed = torch.cat(packed)
        self.scale_zero = torch.cat(scale_zero, 1).contiguous()  # [in / 32, out, 2]

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Int4Linear:
        def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            for a in range(0, w.shape[0], PACK_ROWS):
                g = w[a : a + PACK_ROWS].float().reshape(-1, w.shape[1] // GROUP, GROUP)
                lo, hi = g.amin(-1), g.amax(-1)
                scale = ((hi - lo) / 15).clamp_min(1e-12)
                q = ((g - lo[..., None]) / scale[..., None]).round_().clamp_(0, 15)
                yield q.reshape(-1, w.shape[1]), scale, -lo

        return cls(chunks(), (w.shape[0], w.shape[1]))

    @classmethod
    def from_q4_k(cls, t: QuantTensor) -> Int4Linear:
        return cls((q4_k_groups(t.slice_rows(a, a + PACK_ROWS))
                    for a in range(0, t.shape[0], PACK_ROWS)), t.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(pad_rows(x.to(torch.bfloat16)),
                                                       self.packed, GROUP, self.scale_zero)
        return y[: x.shape[0]]


class Int8WeightLinear(nn.Module):
    """8-bit weights, symmetric per output channel, bf16 activations (torch's
    ``_weight_int8pack_mm``): the layers of a 4-bit model that are not 4-bit (Q6_K, Q5_K,
    Q8_0 tensors, or shapes the int4 kernel does not take)."""

    def __init__(self, w: torch.Tensor | QuantTensor) -> None:
        """``w``: a float weight, or GGUF blocks (dequantised :data:`PACK_ROWS` rows at a
        time, so a float copy of the whole layer never exists)."""
        super().__init__()
        self.out_features, self.in_features = w.shape
        self.weight_q = torch.empty(w.shape, dtype=torch.int8)
        scales = torch.empty(w.shape[0])
        for a in range(0, w.shape[0], PACK_ROWS):
            rows = (w.slice_rows(a, a + PACK_ROWS).dequantize() if isinstance(w, QuantTensor)
                    else w[a : a + PACK_ROWS].float())
            s = (rows.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
            self.weight_q[a : a + PACK_ROWS] = (rows / s[:, None]).round_().clamp_(-127, 127)
            scales[a : a + PACK_ROWS] = s
        self.scales = scales.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(pad_rows(x.to(torch.bfloat16)), self.weight_q,
                                               self.scales)
        return y[: x.shape[0]]


def int4_linear(t: torch.Tensor | QuantTensor) -> nn.Module:
    """The ``quantize="int4"`` layer for a (fused) float weight: 4-bit by group min/max where
    the kernel takes the shape, else 8-bit weight-only."""
    if isinstance(t, QuantTensor):
        return gguf_linear(t)
    return Int4Linear.from_float(t) if int4_fits(tuple(t.shape)) else Int8WeightLinear(t)


def gguf_linear(t: torch.Tensor | QuantTensor) -> nn.Module:
    """The ``quantize="int4"`` layer for a GGUF weight: Q4_K blocks stay 4-bit as they are;
    anything else (Q8_0, Q6_K, Q5_K, Q3_K, F16, a fused weight of mixed types) becomes 8-bit
    weight-only, never re-quantised to 4 bits."""
    if isinstance(t, QuantTensor) and t.kind == Q4_K and int4_fits(t.shape):
        return Int4Linear.from_q4_k(t)
    return Int8WeightLinear(t)


class QuantEmbedding(nn.Module):
    """A GGUF embedding table kept as its blocks; a lookup dequantises the rows it needs."""

    def __init__(self, table: QuantTensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.table, self.dtype = table, dtype
        self.num_embeddings = table.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.rows(ids.long(), self.dtype)
