"""Int8 dynamic quantisation of the linear layers for CPU (fbgemm/x86 kernels).

Weights are quantised once, symmetric per output channel; activations are quantised per call
(per tensor, full 8-bit range). Norms, RoPE, attention and the residual stream stay float32.

On AVX2 without VNNI, fbgemm multiplies u8 x s8 pairs into saturating 16-bit sums; the usual
cure, a 7-bit activation range ("reduce_range"), measured *worse* here (min cosine to fp32 on
the benchmark corpus 0.9913 vs 0.9964 with 8 bits, 0.6B shape): saturation needs two adjacent
near-extreme products and is rarer than the precision lost to a 7-bit range.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

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
