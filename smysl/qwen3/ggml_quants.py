"""GGML's quantised block formats -> float tensors (the GGUF loader's dequantisation).

Each function takes ``[n_blocks, block_bytes]`` uint8 and returns ``[n_blocks, block_values]``
float32, computing exactly what ggml's ``dequantize_row_*`` computes (float32 products in the
same order; tested against llama.cpp's gguf-py). Layouts, from ggml-common.h (``QK_K = 256``;
``d``/``dmin`` are float16):

* Q8_0 (32 values, 34 bytes): ``d``, 32 int8 ``q``; ``y = q * d``.
* Q6_K (256, 210): ``ql[128]`` low 4 bits, ``qh[64]`` high 2 bits, ``scales[16]`` int8, ``d``;
  ``y = d * scale * (q - 32)``, one scale per 16 values.
* Q5_K (256, 176): ``d``, ``dmin``, ``scales[12]`` (8 six-bit scales and mins), ``qh[32]`` fifth
  bits, ``qs[128]`` low 4 bits; ``y = d * sc * q - dmin * m``, one (sc, m) per 32 values.
* Q4_K (256, 144): ``d``, ``dmin``, ``scales[12]``, ``qs[128]``; as Q5_K with 4-bit ``q``.
* Q3_K (256, 110): ``hmask[32]`` third bits, ``qs[64]`` low 2 bits, ``scales[12]`` (16 six-bit
  scales, offset 32), ``d``; ``y = d * (scale - 32) * (q - 4 * (1 - hbit))``.
"""

from __future__ import annotations

import torch

#: GGML type ids of the block formats here -> (values per block, bytes per block).
Q8_0, Q3_K, Q4_K, Q5_K, Q6_K = 8, 11, 12, 13, 14
BLOCKS = {Q8_0: (32, 34), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176),
          Q6_K: (256, 210)}


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] uint8 (little-endian float16) -> [n, 1] float32."""
    return b.contiguous().view(torch.float16).float()


def _i(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int32)


def q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K ``scales[12]`` [n, 12] -> 6-bit scales and mins, [n, 8] each (ggml's
    ``get_scale_min_k4``: sub-blocks 0-3 in the low 6 bits of bytes 0-7, 4-7 split between
    bytes 8-11 and the top 2 bits of bytes 0-7)."""
    s = _i(s)
    lo_sc, lo_m = s[:, 0:4] & 63, s[:, 4:8] & 63
    hi_sc = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    hi_m = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat([lo_sc, hi_sc], 1), torch.cat([lo_m, hi_m], 1)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 128] bytes -> [n, 8, 32]: each 32-byte run gives one sub-block of low nibbles, then
    one of high nibbles."""
    q = _i(qs).view(-1, 4, 1, 32)
    return torch.cat([q & 0xF, q >> 4], 2).view(-1, 8, 32)


def _affine(q: torch.Tensor, b: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``d * sc * q - dmin * m`` per 32-value sub-block; q [n, 8, 32] -> [n, 256]."""
    sc, m = _scale_min_k4(scales)
    d1 = _f16(b[:, 0:2]) * sc.float()  # [n, 8]
    m1 = _f16(b[:, 2:4]) * m.float()
    return (d1[:, :, None] * q.float() - m1[:, :, None]).view(-1, 256)


def q4_k(b: torch.Tensor) -> torch.Tensor:
    return _affine(_nibbles(b[:, 16:144]), b, b[:, 4:16])


def q5_k(b: torch.Tensor) -> torch.Tensor:
    qh = _i(b[:, 16:48])  # [n, 32]: bit j is the fifth bit of sub-block j
    bits = (qh[:, None, :] >> torch.arange(8, dtype=torch.int32)[None, :, None]) & 1
    return _affine(_nibbles(b[:, 48:176]) + 16 * bits, b, b[:, 4:16])


def q6_k(b: torch.Tensor) -> torch.Tensor:
    ql, qh = _i(b[:, 0:128]).view(-1, 2, 2, 32), _i(b[:, 128:192]).view(-1, 2, 1, 32)
    sc = b[:, 192:208].contiguous().view(torch.int8).float()  # [n, 16]
    d = _f16(b[:, 208:210])
    # per 128-value half: values l, l+32, l+64, l+96 take ql[l] low, ql[l+32] low, ql[l] high,
    # ql[l+32] high, each with two more bits of qh[l] (bits 0-1, 2-3, 4-5, 6-7)
    low = torch.cat([ql & 0xF, ql >> 4], 2)  # [n, 2, 4, 32]
    high = (qh >> torch.tensor([0, 2, 4, 6], dtype=torch.int32)[None, None, :, None]) & 3
    q = (low | (high << 4)) - 32  # [n, 2, 4, 32]
    scale = (d * sc).repeat_interleave(16, 1)  # [n, 256]: one scale per 16 values
    return scale * q.reshape(-1, 256).float()


def q3_k(b: torch.Tensor) -> torch.Tensor:
    hm, qs, s = _i(b[:, 0:32]), _i(b[:, 32:96]).view(-1, 2, 1, 32), _i(b[:, 96:108])
    d = _f16(b[:, 108:110])
    # 16 six-bit scales: low 4 bits from bytes 0-7 (low then high nibbles), top 2 from 8-11
    top = s[:, 8:12]
    sc = torch.cat([(s[:, 0:4] & 0xF) | ((top & 3) << 4),
                    (s[:, 4:8] & 0xF) | (((top >> 2) & 3) << 4),
                    (s[:, 0:4] >> 4) | (((top >> 4) & 3) << 4),
                    (s[:, 4:8] >> 4) | (((top >> 6) & 3) << 4)], 1) - 32  # [n, 16]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int32)[None, None, :, None]
    low = (qs >> shifts) & 3  # [n, 2 halves, 4 runs of 32, 32]
    bit = torch.arange(8, dtype=torch.int32).view(1, 2, 4, 1)  # hmask bit 4 * half + run
    q = low - 4 * (1 - ((hm[:, None, None, :] >> bit) & 1))
    scale = (d * sc.float()).repeat_interleave(16, 1)  # [n, 256]: one scale per 16 values
    return scale * q.reshape(-1, 256).float()


DEQUANTIZE = {Q8_0: q8_0, Q3_K: q3_k, Q4_K: q4_k, Q5_K: q5_k, Q6_K: q6_k}


def dequantize(raw: torch.Tensor, kind: int, shape: tuple[int, ...], dtype: torch.dtype,
               step: int = 1 << 16) -> torch.Tensor:
    """uint8 bytes of a ``kind`` tensor -> a new ``[shape]`` tensor in ``dtype``, ``step``
    blocks at a time (bounds the float32 scratch: 64 MiB for K-quants)."""
    per, width = BLOCKS[kind]
    blocks = raw.view(-1, width)
    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1, per)  # blocks run along the rows
    fn = DEQUANTIZE[kind]
    for a in range(0, blocks.shape[0], step):
        flat[a : a + step] = fn(blocks[a : a + step])
    return out


class QuantTensor:
    """A GGUF matrix kept as its blocks: ``data`` [rows, row_bytes] uint8 of type ``kind``,
    standing for a float ``[rows, cols]`` tensor (``shape``). The loader hands these to
    quantised layers (:mod:`smysl.qwen3.quantize`) instead of dequantising them."""

    def __init__(self, kind: int, data: torch.Tensor, shape: tuple[int, int]) -> None:
        self.kind, self.data, self.shape = kind, data, shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.data.reshape(-1), self.kind, self.shape, dtype)

    def rows(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``index`` dequantised: [len(index), cols] (an embedding lookup)."""
        blocks = self.data[index].reshape(-1, BLOCKS[self.kind][1])
        return DEQUANTIZE[self.kind](blocks).view(len(index), self.shape[1]).to(dtype)

    def slice_rows(self, start: int, stop: int) -> QuantTensor:
        """Rows ``start:stop`` (a view of the same blocks)."""
        data = self.data[start:stop]
        return QuantTensor(self.kind, data, (data.shape[0], self.shape[1]))

    @staticmethod
    def cat(parts: list[QuantTensor]) -> QuantTensor:
        """Row-wise concatenation of same-type matrices (a fused q|k|v or gate|up)."""
        return QuantTensor(parts[0].kind, torch.cat([p.data for p in parts]),
                           (sum(p.shape[0] for p in parts), parts[0].shape[1]))


def q4_k_groups(q: QuantTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_K matrix as 4-bit groups of 32 columns: (q [rows, cols] int32 in 0..15, scale and
    min [rows, cols // 32] float32) with ``w = scale * q - min`` exactly as :func:`q4_k`."""
    b = q.data.reshape(-1, 144)
    nib = _nibbles(b[:, 16:144])  # [n, 8, 32]
    sc, m = _scale_min_k4(b[:, 4:16])
    scale = _f16(b[:, 0:2]) * sc.float()  # [n, 8]
    mins = _f16(b[:, 2:4]) * m.float()
    rows, cols = q.shape
    return (nib.reshape(rows, cols), scale.reshape(rows, cols // 32),
            mins.reshape(rows, cols // 32))
