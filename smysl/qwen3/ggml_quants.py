"""GGML's quantised block formats -> float tensors (the GGUF loader's dequantisation), or 4-bit
planes for the kept path (:func:`planes`).

Each ``*_codes`` function takes ``[n_blocks, block_bytes]`` uint8 and returns the blocks' integer
codes and scales (:class:`Codes`); :data:`DEQUANTIZE` turns them into ``[n_blocks,
block_values]`` float32, computing exactly what ggml's ``dequantize_row_*`` computes (float32
products in the same order; tested against llama.cpp's gguf-py). Layouts, from ggml-common.h
(``QK_K = 256``; ``d``/``dmin`` are float16):

* Q8_0 (32 values, 34 bytes): ``d``, 32 int8 ``q``; ``y = q * d``.
* Q4_0 (32, 18): ``d``, ``qs[16]`` (value j the low nibble of byte j, value j + 16 the high
  one); ``y = (q - 8) * d``. Q4_1 (32, 20): ``d``, ``m``, ``qs[16]``; ``y = q * d + m``.
* Q5_0 (32, 22): ``d``, ``qh[4]`` (bit j: the fifth bit of value j), ``qs[16]``;
  ``y = (q - 16) * d``. Q5_1 (32, 24): ``d``, ``m``, ``qh[4]``, ``qs[16]``; ``y = q * d + m``.
* IQ4_NL (32, 18): ``d``, ``qs[16]`` as Q4_0; ``y = d * K[q]`` with the non-uniform 16-entry
  grid ``K`` (:data:`IQ4_GRID`). IQ4_XS (256, 136): ``d``, ``scales_h`` (uint16), ``scales_l[4]``,
  ``qs[128]``; per 32 values a 6-bit scale ``ls`` and ``y = d * (ls - 32) * K[q]``.
* Q6_K (256, 210): ``ql[128]`` low 4 bits, ``qh[64]`` high 2 bits, ``scales[16]`` int8, ``d``;
  ``y = d * scale * (q - 32)``, one scale per 16 values.
* Q5_K (256, 176): ``d``, ``dmin``, ``scales[12]`` (8 six-bit scales and mins), ``qh[32]`` fifth
  bits, ``qs[128]`` low 4 bits; ``y = d * sc * q - dmin * m``, one (sc, m) per 32 values.
* Q4_K (256, 144): ``d``, ``dmin``, ``scales[12]``, ``qs[128]``; as Q5_K with 4-bit ``q``.
* Q3_K (256, 110): ``hmask[32]`` third bits, ``qs[64]`` low 2 bits, ``scales[12]`` (16 six-bit
  scales, offset 32), ``d``; ``y = d * (scale - 32) * (q - 4 * (1 - hbit))``.
* Q2_K (256, 84): ``scales[16]`` (per 16 values a 4-bit scale, low nibble, and a 4-bit min),
  ``qs[64]`` 2-bit codes, ``d``, ``dmin``; ``y = d * sc * q - dmin * m``.

The IQ types below 4 bits (:data:`~smysl.qwen3.gguf.GRID_BLOCKS`) index ggml's grids of 256 to
2,048 vectors; llama.cpp's gguf-py decodes them (numpy, ~50M values/s on one core), and has no
codes to give: :func:`planes` re-codes their values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

# GGML type ids of the block formats here, and each one's (values, bytes) per block
from smysl.qwen3.gguf import (
    GRID_BLOCKS,
    IQ1_M,
    IQ4_NL,
    IQ4_XS,
    Q2_K,
    Q3_K,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    gguf_py,
)
from smysl.qwen3.gguf import QUANT_BLOCKS as BLOCKS

#: ggml's ``kvalues_iq4nl``: the IQ4 types' 4-bit codes index this grid.
IQ4_GRID = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] uint8 (little-endian float16) -> [n, 1] float32."""
    return b.contiguous().view(torch.float16).float()


def _i(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int32)


class Codes(NamedTuple):
    """A block format's integer codes and scales: the value at column ``c`` of a block is
    ``scale[c // width] * q[c] - mins[c // width]`` (no ``mins``: nothing subtracted)."""

    q: torch.Tensor  # [n, values] int32
    scale: torch.Tensor  # [n, values // width] float32
    mins: torch.Tensor | None  # like scale
    width: int  # values per scale: 32 or 16
    #: The range of ``q`` the format allows (for re-coding into 4-bit planes).
    qmin: int
    qmax: int

    def values(self) -> torch.Tensor:
        """[n, values] float32, in ggml's order of float32 operations."""
        n, per = self.q.shape
        y = self.scale[:, :, None] * self.q.view(n, -1, self.width).float()
        if self.mins is not None:
            y = y - self.mins[:, :, None]
        return y.view(n, per)


def q8_0_codes(b: torch.Tensor) -> Codes:
    return Codes(_i(b[:, 2:].contiguous().view(torch.int8)), _f16(b[:, :2]), None, 32, -128, 127)


def _halves(qs: torch.Tensor) -> torch.Tensor:
    """[..., 16] bytes -> [..., 32] 4-bit codes: value j the low nibble of byte j, value j + 16
    its high nibble (the 32-value layout of Q4_0 ... Q5_1 and the IQ4 types)."""
    qs = _i(qs)
    return torch.cat([qs & 0xF, qs >> 4], -1)


@functools.cache
def _ints(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A small int32 constant on ``device``, made once per device: the decoders run where the
    blocks are (CPU; a GPU for an embedding table kept as blocks there, whose first lookup, in
    the eager warm-up, comes before any CUDA graph is captured)."""
    return torch.tensor(values, dtype=torch.int32, device=device)


def _legacy(b: torch.Tensor, fifth: bool, affine: bool) -> Codes:
    """Q4_0 / Q4_1 / Q5_0 / Q5_1: 32 values per block, one scale ``d`` (and for the ``_1``
    types a float16 ``m`` added), the 16 bytes of codes last. The ``_0`` types' offset (8 or
    16 times ``d``) becomes ``mins``, so ``q`` stays 0..15 (0..31) and a 4-bit plane holds it
    as it is."""
    d = _f16(b[:, 0:2])  # [n, 1]
    q = _halves(b[:, -16:])  # [n, 32]
    if fifth:  # qh: a little-endian uint32 after d (and m)
        at = 4 if affine else 2
        # a fresh copy, not contiguous(): one block's slice counts as contiguous already, and
        # its offset (2 for Q5_0) and row stride are no multiples of 4, which view(int32) refuses
        qh = _i(b[:, at : at + 4].clone(memory_format=torch.contiguous_format)
                .view(torch.int32))  # [n, 1]
        q = q | (((qh >> _ints(tuple(range(32)), b.device)) & 1) << 4)
    top = 31 if fifth else 15
    if affine:  # y = q * d + m
        return Codes(q, d, -_f16(b[:, 2:4]), 32, 0, top)
    return Codes(q, d, d * (top + 1) / 2, 32, 0, top)  # y = (q - 8 or 16) * d, exactly


def q4_0_codes(b: torch.Tensor) -> Codes:
    return _legacy(b, fifth=False, affine=False)


def q4_1_codes(b: torch.Tensor) -> Codes:
    return _legacy(b, fifth=False, affine=True)


def q5_0_codes(b: torch.Tensor) -> Codes:
    return _legacy(b, fifth=True, affine=False)


def q5_1_codes(b: torch.Tensor) -> Codes:
    return _legacy(b, fifth=True, affine=True)


def _iq4(nibbles: torch.Tensor) -> torch.Tensor:
    """4-bit codes -> their :data:`IQ4_GRID` values (int32, -127..113: integers, so the
    two-plane split ``16 * hi + lo`` of :func:`planes` holds them exactly)."""
    return _ints(IQ4_GRID, nibbles.device)[nibbles]


def iq4_nl_codes(b: torch.Tensor) -> Codes:
    q = _iq4(_halves(b[:, 2:18]))  # [n, 32], laid out as Q4_0
    return Codes(q, _f16(b[:, 0:2]), None, 32, IQ4_GRID[0], IQ4_GRID[-1])


def iq4_xs_codes(b: torch.Tensor) -> Codes:
    d = _f16(b[:, 0:2])  # [n, 1]
    hi = _i(b[:, 2:4].contiguous().view(torch.int16)) & 0xFFFF  # [n, 1] scales_h, uint16
    lo = _i(b[:, 4:8])  # [n, 4]: sub-blocks 2i and 2i + 1 in the low and high nibble
    ls = torch.stack([lo & 0xF, lo >> 4], 2).view(-1, 8)
    ls = ls | (((hi >> _ints(tuple(range(0, 16, 2)), b.device)) & 3) << 4)  # 6-bit, [n, 8]
    q = _iq4(_halves(b[:, 8:136].reshape(-1, 8, 16))).view(-1, 256)  # 8 runs laid out as Q4_0
    return Codes(q, d * (ls - 32).float(), None, 32, IQ4_GRID[0], IQ4_GRID[-1])


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


def _affine(q: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, qmax: int) -> Codes:
    """``d * sc * q - dmin * m`` per 32-value sub-block; q [n, 8, 32]."""
    sc, m = _scale_min_k4(scales)
    d1 = _f16(b[:, 0:2]) * sc.float()  # [n, 8]
    m1 = _f16(b[:, 2:4]) * m.float()
    return Codes(q.reshape(-1, 256), d1, m1, 32, 0, qmax)


def q4_k_codes(b: torch.Tensor) -> Codes:
    return _affine(_nibbles(b[:, 16:144]), b, b[:, 4:16], 15)


def q5_k_codes(b: torch.Tensor) -> Codes:
    qh = _i(b[:, 16:48])  # [n, 32]: bit j is the fifth bit of sub-block j
    bits = (qh[:, None, :] >> _ints(tuple(range(8)), b.device)[None, :, None]) & 1
    return _affine(_nibbles(b[:, 48:176]) + 16 * bits, b, b[:, 4:16], 31)


def q6_k_codes(b: torch.Tensor) -> Codes:
    ql, qh = _i(b[:, 0:128]).view(-1, 2, 2, 32), _i(b[:, 128:192]).view(-1, 2, 1, 32)
    sc = b[:, 192:208].contiguous().view(torch.int8).float()  # [n, 16]
    d = _f16(b[:, 208:210])
    # per 128-value half: values l, l+32, l+64, l+96 take ql[l] low, ql[l+32] low, ql[l] high,
    # ql[l+32] high, each with two more bits of qh[l] (bits 0-1, 2-3, 4-5, 6-7)
    low = torch.cat([ql & 0xF, ql >> 4], 2)  # [n, 2, 4, 32]
    high = (qh >> _ints((0, 2, 4, 6), b.device)[None, None, :, None]) & 3
    q = (low | (high << 4)) - 32  # [n, 2, 4, 32]
    return Codes(q.reshape(-1, 256), d * sc, None, 16, -32, 31)  # one scale per 16 values


def q3_k_codes(b: torch.Tensor) -> Codes:
    hm, qs, s = _i(b[:, 0:32]), _i(b[:, 32:96]).view(-1, 2, 1, 32), _i(b[:, 96:108])
    d = _f16(b[:, 108:110])
    # 16 six-bit scales: low 4 bits from bytes 0-7 (low then high nibbles), top 2 from 8-11
    top = s[:, 8:12]
    sc = torch.cat([(s[:, 0:4] & 0xF) | ((top & 3) << 4),
                    (s[:, 4:8] & 0xF) | (((top >> 2) & 3) << 4),
                    (s[:, 0:4] >> 4) | (((top >> 4) & 3) << 4),
                    (s[:, 4:8] >> 4) | (((top >> 6) & 3) << 4)], 1) - 32  # [n, 16]
    shifts = _ints((0, 2, 4, 6), b.device)[None, None, :, None]
    low = (qs >> shifts) & 3  # [n, 2 halves, 4 runs of 32, 32]
    bit = _ints(tuple(range(8)), b.device).view(1, 2, 4, 1)  # hmask bit 4 * half + run
    q = low - 4 * (1 - ((hm[:, None, None, :] >> bit) & 1))
    return Codes(q.reshape(-1, 256), d * sc.float(), None, 16, -4, 3)  # one scale per 16


def q2_k_codes(b: torch.Tensor) -> Codes:
    s, d, dmin = _i(b[:, 0:16]), _f16(b[:, 80:82]), _f16(b[:, 82:84])
    # per 128-value half: runs j = 0..3 take bits 2j..2j+1 of qs, 16 values from bytes 0-15
    # of the half's 32, then 16 from bytes 16-31; the 16 scales follow that order
    qs = _i(b[:, 16:80]).view(-1, 2, 1, 2, 16)
    q = (qs >> _ints((0, 2, 4, 6), b.device)[None, None, :, None, None]) & 3  # [n, 2, 4, 2, 16]
    return Codes(q.reshape(-1, 256), d * (s & 0xF).float(), dmin * (s >> 4).float(), 16, 0, 3)


CODES = {Q4_0: q4_0_codes, Q4_1: q4_1_codes, Q5_0: q5_0_codes, Q5_1: q5_1_codes,
         Q8_0: q8_0_codes, Q2_K: q2_k_codes, Q3_K: q3_k_codes, Q4_K: q4_k_codes, Q5_K: q5_k_codes,
         Q6_K: q6_k_codes, IQ4_NL: iq4_nl_codes, IQ4_XS: iq4_xs_codes}


#: Byte offsets in a block of its float16 scales (``d``, and ``m`` or ``dmin``): ggml's
#: ``ggml_validate_row_data`` checks these. One that is NaN or inf makes its whole block so.
SCALES_AT = {Q4_0: (0,), Q4_1: (0, 2), Q5_0: (0,), Q5_1: (0, 2), Q8_0: (0,), Q2_K: (80, 82),
             Q3_K: (108,), Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), IQ4_NL: (0,), IQ4_XS: (0,),
             **{kind: (0,) for kind in GRID_BLOCKS if kind != IQ1_M}}  # IQ1_M: _scale_bits


def _scale_bits(blocks: torch.Tensor, kind: int) -> list[torch.Tensor]:
    """The float16 bits of each block's scales ([n] int16 each; :data:`SCALES_AT`). IQ1_M
    spreads its ``d`` over the top nibbles of its four uint16 ``scales`` (bytes 48-55)."""
    if kind == IQ1_M:
        sc = _i(blocks[:, 48:56].contiguous().view(torch.int16)) & 0xFFFF  # [n, 4]
        bits = ((sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0xF0) | ((sc[:, 2] >> 4) & 0xF00)
                | (sc[:, 3] & 0xF000))
        return [bits.to(torch.int16)]
    return [blocks[:, at : at + 2].contiguous().view(torch.int16).squeeze(-1)
            for at in SCALES_AT[kind]]


def bad_block(data: torch.Tensor, kind: int) -> tuple[int, int] | None:
    """(row, block in the row) of the first block of ``data`` ([rows, row_bytes] uint8 of
    ``kind`` blocks) with a NaN or inf scale, else None: a damaged file, refused at load
    rather than computing NaN for every input."""
    width = BLOCKS[kind][1]
    blocks = data.reshape(-1, width)
    bad = torch.zeros(blocks.shape[0], dtype=torch.bool, device=data.device)
    for bits in _scale_bits(blocks, kind):  # the exponent all ones: inf or NaN
        bad |= (bits & 0x7C00) == 0x7C00
    if not bool(bad.any()):
        return None
    first, per_row = int(bad.nonzero()[0, 0]), data.shape[-1] // width
    return first // per_row, first % per_row


def _dequantizer(kind: int) -> Callable[[torch.Tensor], torch.Tensor]:
    codes = CODES[kind]
    return lambda b: codes(b).values()


def _by_gguf_py(kind: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A grid type's decoder: gguf-py's, on the CPU (blocks on a GPU go there and back)."""

    def decode(b: torch.Tensor) -> torch.Tensor:
        gguf = gguf_py()
        out = gguf.quants.dequantize(b.cpu().numpy(), gguf.GGMLQuantizationType(kind))
        return torch.from_numpy(out.reshape(b.shape[0], -1)).to(b.device)

    return decode


#: Block bytes [n, block_bytes] uint8 -> values [n, block_values] float32, per type.
DEQUANTIZE = {**{kind: _dequantizer(kind) for kind in CODES},
              **{kind: _by_gguf_py(kind) for kind in GRID_BLOCKS}}


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

    @property
    def decodes_anywhere(self) -> bool:
        """Whether its blocks decode where they lie (torch), not only on the CPU (gguf-py's
        numpy for the grid types: a CUDA graph could not capture the copies)."""
        return self.kind not in GRID_BLOCKS

    def to(self, device: torch.device) -> QuantTensor:
        """The same blocks on ``device`` (a lookup then dequantises there)."""
        return QuantTensor(self.kind, self.data.to(device), self.shape)

    def slice_rows(self, start: int, stop: int) -> QuantTensor:
        """Rows ``start:stop`` (a view of the same blocks)."""
        data = self.data[start:stop]
        return QuantTensor(self.kind, data, (data.shape[0], self.shape[1]))

    @staticmethod
    def cat(parts: list[QuantTensor]) -> QuantTensor | QuantStack:
        """Row-wise concatenation (a fused q|k|v or gate|up): one matrix of blocks when the
        parts share a type, else a :class:`QuantStack` of them."""
        if len({p.kind for p in parts}) > 1:
            return QuantStack(tuple(parts))
        return QuantTensor(parts[0].kind, torch.cat([p.data for p in parts]),
                           (sum(p.shape[0] for p in parts), parts[0].shape[1]))


class QuantStack(NamedTuple):
    """Matrices of different block types stacked by rows, each kept as its blocks."""

    parts: tuple[QuantTensor, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.shape[0] for p in self.parts), self.parts[0].shape[1]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.cat([p.dequantize(dtype) for p in self.parts])


#: A weight as the loader hands it to a layer constructor: float, or kept as GGUF blocks.
Weight = torch.Tensor | QuantTensor | QuantStack


class Plane(NamedTuple):
    """One 4-bit plane of a matrix in groups of 32 columns: ``scale * q - mins`` per group."""

    q: torch.Tensor  # [rows, cols] int32 in 0..15
    scale: torch.Tensor  # [rows, cols // 32] float32
    mins: torch.Tensor  # [rows, cols // 32] float32


def planes(t: QuantTensor) -> list[Plane]:
    """A quantised matrix as 4-bit planes in groups of 32 columns that sum to it (what torch's
    int4 kernel multiplies: :class:`smysl.qwen3.quantize.Int4Linear`).

    Exact for Q4_K (one plane: its own sub-blocks), Q5_K and Q8_0 (two: ``q = 16 * hi + lo``,
    the low nibble with the block's scale, the high one with 16 times it). Q6_K and Q3_K have
    one scale per 16 columns, which a 32-column group cannot hold: their two planes are a
    signed 8-bit code per group on the grid of the sub-block with the larger scale — that
    sub-block exact, the other rounded to half the grid: 1/8 (Q6_K) or 1/64 (Q3_K) of the
    larger one's step (a whole grid step at +128, where the two have equal scales of opposite
    sign). Q2_K scales and offsets every 16 columns by unrelated float16 factors, so no grid
    holds either half exactly: its 8-bit code spans the group's largest magnitude (error at
    most 1/254 of it; Q2_K's own step is a third of its sub-block's range). So does the IQ
    types' below 4 bits (:data:`~smysl.qwen3.gguf.GRID_BLOCKS`: values on a grid). Every plane's
    offset is 0 or a power-of-two multiple of its scale, so rounding the kernel's scales to
    bf16 scales each group's weights and adds no offset error.
    """
    rows, cols = t.shape
    blocks = t.data.reshape(-1, BLOCKS[t.kind][1])
    c = CODES[t.kind](blocks) if t.kind in CODES else None
    if c is None or c.width == 16:
        n = blocks.shape[0]
        v = (c.values() if c is not None else DEQUANTIZE[t.kind](blocks)).view(n, -1, 32)
        if c is not None and c.mins is None:
            pair = c.scale.view(n, -1, 2)
            big = pair.abs().argmax(-1, keepdim=True)
            # signed, a power of two below the larger scale: its values (q * scale) divide
            # exactly into -128..124 (Q6_K 4 * q, Q3_K 32 * q), the other half's into -128..128
            grid = pair.gather(-1, big).squeeze(-1) * (max(-c.qmin, c.qmax) / 128)  # [n, groups]
        else:  # Q2_K, the IQ grid types
            grid = v.abs().amax(-1) / 127
        r = v / grid.where(grid != 0, 1)[..., None]
        q = r.round_().clamp_(-128, 127).where(grid[..., None] != 0, 0).to(torch.int32)
        c = Codes(q.view(n, -1), grid, None, 32, -128, 127)
    scale = c.scale.view(rows, -1)
    mins = (c.mins if c.mins is not None else torch.zeros_like(c.scale)).view(rows, -1)
    if c.qmin >= 0 and c.qmax <= 15:  # Q4_K: one plane
        return [Plane(c.q.view(rows, cols), scale, mins)]
    lo, hi = c.q & 15, c.q >> 4  # q = 16 * hi + lo, hi from qmin >> 4 up
    h0 = c.qmin >> 4  # hi - h0 is in 0..15; 16 * scale * hi = 16 * scale * (hi - h0) + that
    return [Plane(lo.view(rows, cols), scale, mins),
            Plane((hi - h0).view(rows, cols), 16 * scale, -16 * h0 * scale)]
