"""Quantised linear layers for CPU: int8 (``quantize="int8"``), and the int4 layers of
``quantize="int4"`` (torch's weight-only int4/int8 kernels, bf16 activations: their float32
variants are scalar code, 2.8 and 5.9 GFLOP/s against 345 and 321 in bf16 on an AVX-512 EPYC).

int8 (``quantize="int8"``): weights quantised once, symmetric per output channel. Which kernel
multiplies them is :func:`smysl.qwen3.cpu.int8_kernel`'s rule:

* ``onednn-int8`` (:class:`Int8Linear`; x86): activations quantised on each call **per row**
  (per token), symmetric, 8 bits where the CPU has int8 dot products (VNNI / AMX) and 7 where
  it has not (:func:`smysl.qwen3.cpu.int8_activation_bits`: AVX2's 16-bit pair sums cannot
  saturate then). A row's scale depends on that row alone and the integer sums are exact, so a
  text's vector is bit-identical alone and in any batch, and one outlier token no longer
  coarsens the others. On an AVX-512-VNNI EPYC (0.6B shape) it ran 1.05-1.07x fbgemm's
  per-tensor path, at min cosine to fp32 0.9983 instead of 0.9972; capped at AVX2 there,
  0.92-1.0x fbgemm's AVX2 kernel at min cosine 0.9964 instead of 0.9943.
* ``fbgemm-int8`` (:class:`DynamicInt8Linear`; x86 where torch's oneDNN lacks the op;
  ``torch-int8``: the same layer off x86, on torch's default quantised engine): activations
  quantised per call **per tensor** (over the whole batch, full 8-bit range), so a vector
  depends slightly on its batch. Without VNNI, fbgemm's u8 x s8 pair sums can saturate.

Norms, RoPE and the residual stream stay float32; attention too, except where the CPU computes
bf16 natively (:func:`smysl.qwen3.cpu.int8_attention_dtype`).
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from smysl.qwen3.cpu import detect, int8_activation_bits, onednn_bf16
from smysl.qwen3.ggml_quants import Plane, QuantStack, QuantTensor, Weight, planes
from smysl.qwen3.model import pad_rows, padded_rows

#: Weight code range: ``-QMAX..QMAX`` (int8, symmetric).
QMAX = 127.0


def _weight_codes(w: torch.Tensor | QuantTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float weight or GGUF blocks -> (int8 codes, float32 scales [out]): symmetric
    per output channel. Converted :func:`pack_rows` rows at a time: the float32 temporaries of
    a whole 8B gate|up weight raised the loading peak by 579 MiB (fbgemm's layer: 194); in
    blocks, by none. A NaN or inf weight is an error: its codes would come out finite."""
    codes = torch.empty(w.shape, dtype=torch.int8)
    scales = torch.empty(w.shape[0])
    step = pack_rows(w.shape[1])
    for a in range(0, w.shape[0], step):
        # float32 rows; the caller's own tensor when it is float32 already: never edited
        rows = (w.slice_rows(a, a + step).dequantize() if isinstance(w, QuantTensor)
                else w[a : a + step].detach().cpu().float())
        s = rows.abs().amax(dim=1) / QMAX
        if not torch.isfinite(s).all():
            raise ValueError(f"a {tuple(w.shape)} weight holds NaN or inf values (rows from "
                             f"{a}): the checkpoint is damaged")
        s.clamp_min_(1e-12)
        codes[a : a + step] = torch.div(rows, s[:, None]).round_()  # integers in -127..127
        scales[a : a + step] = s
    return codes, scales


class Int8Linear(nn.Module):
    """Drop-in for :class:`smysl.qwen3.model.Linear`: int8 weights prepacked for oneDNN, and
    activations quantised per row on each call (see the module docstring). ``act_bits``: 8 or
    7, default :func:`smysl.qwen3.cpu.int8_activation_bits` of this CPU."""

    def __init__(self, weight: torch.Tensor, act_bits: int | None = None) -> None:
        super().__init__()
        bits = int8_activation_bits(detect()) if act_bits is None else act_bits
        if bits not in (7, 8):
            raise ValueError(f"int8 activation codes have 7 or 8 bits, not {bits}")
        # codes -qmax..qmax, passed to oneDNN as the unsigned q + zero (its fast int8 kernels
        # take u8 activations x s8 weights): 127 and 128 for 8 bits, 63 and 64 for 7
        self.zero = 1 << (bits - 1)
        self.qmax = float(self.zero - 1)
        codes, self.scales = _weight_codes(weight)
        self.out_features, self.in_features = codes.shape
        self.zeros = torch.zeros(self.out_features, dtype=torch.long)
        # an opaque oneDNN tensor, not a parameter: nothing reads it back
        self.packed = torch.ops.onednn.qlinear_prepack(codes, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [M, in] float32 or bf16 -> [M, out] float32."""
        if not x.shape[0]:
            return x.new_zeros(0, self.out_features, dtype=torch.float32)
        amax = x.abs().amax(1, keepdim=True).float().clamp_min_(1e-30)  # [M, 1]
        # codes computed in float32 whatever x is (bf16 would round them); a mixed-dtype
        # multiply is ~10x slower than widening first. A NaN/inf row gets arbitrary codes (the
        # int8 cast of NaN is undefined) but stays non-finite: its ``amax`` rescales it below.
        inv = self.qmax / amax
        t = torch.mul(x, inv) if x.dtype == torch.float32 else x.float().mul_(inv)
        # q + zero as uint8 via int8 (float -> uint8 conversion is ~2x slower than float ->
        # int8 here): 8 bits flip the sign bit, 7 bits add 64 (q + 64 <= 127 is a valid int8)
        q = t.round_().to(torch.int8)
        xq = (q.view(torch.uint8).bitwise_xor_(128) if self.zero == 128
              else q.add_(self.zero).view(torch.uint8))
        m, n = xq.shape[0], padded_rows(xq.shape[0])
        if n != m:  # oneDNN keeps a kernel and its memory per row count
            xq = torch.cat([xq, xq.new_full((n - m, xq.shape[1]), self.zero)])
        y = torch.ops.onednn.qlinear_pointwise(xq.contiguous(), 1.0, self.zero, self.packed,
                                               self.scales, self.zeros, None, 1.0, 0,
                                               torch.float32, "none", [], "")
        return y[:m].mul_(amax / self.qmax)


class DynamicInt8Linear(nn.Module):
    """Drop-in for :class:`smysl.qwen3.model.Linear`: torch's dynamic int8 layer (fbgemm on x86),
    activations quantised per tensor on each call."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        # the shared coder (row blocks: no float32 copy of the whole weight, 194 MiB for an 8B
        # gate|up with torch.quantize_per_channel; the same codes and scales)
        codes, scales = _weight_codes(weight)
        self.out_features, self.in_features = codes.shape
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # deprecated in torch, still the fbgemm entry point
            warnings.simplefilter("ignore", UserWarning)
            wq = torch._make_per_channel_quantized_tensor(codes, scales.double(), zeros, 0)
            self.packed = torch.ops.quantized.linear_prepack(wq, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(pad_rows(x.float()), self.packed, False)
        return y[: x.shape[0]]


def int8_linear(kernel: str) -> type[Int8Linear] | type[DynamicInt8Linear]:
    """The int8 layer constructor for ``kernel`` (:func:`smysl.qwen3.cpu.int8_kernel`); for
    ``fbgemm-int8`` with fbgemm's x86 engine selected."""
    if kernel == "onednn-int8":
        return Int8Linear
    if kernel == "fbgemm-int8" and "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    return DynamicInt8Linear


# ---------------------------------------------------------------------------- 4-bit weights
#: Columns per int4 group: a Q4_K sub-block, and the smallest group torch's CPU kernel takes.
GROUP = 32
#: Elements of a weight converted at a time while loading: each chunk's int32 codes and float
#: scratch take ~16 MB (with 2048-row chunks, the 8B's ffn_down planes took ~800 MB of
#: scratch and the Q4_K_M load peaked 500 MiB higher).
PACK_ELEMENTS = 1 << 22


def pack_rows(cols: int) -> int:
    """Rows per chunk of a ``cols``-wide weight: a multiple of the int4 kernel's 64-row
    blocks, :data:`PACK_ELEMENTS` elements or fewer (64 rows at least)."""
    return max(64, PACK_ELEMENTS // cols // 64 * 64)


def int4_fits(shape: tuple[int, ...]) -> bool:
    """Whether torch's CPU int4 kernel takes an ``[out, in]`` weight (out % 16, in % 32)."""
    return len(shape) == 2 and shape[0] % 16 == 0 and shape[1] % GROUP == 0


def float_planes(w: torch.Tensor) -> Iterator[list[Plane]]:
    """A float ``[out, in]`` weight as one 4-bit plane per :func:`pack_rows` rows: each group
    of 32 columns quantised over its min..max (on the weight's device)."""
    step = pack_rows(w.shape[1])
    for a in range(0, w.shape[0], step):
        g = w[a : a + step].float().reshape(-1, w.shape[1] // GROUP, GROUP)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp_min(1e-12)
        q = ((g - lo[..., None]) / scale[..., None]).round_().clamp_(0, 15)
        yield [Plane(q.reshape(-1, w.shape[1]), scale, -lo)]


def block_planes(t: QuantTensor) -> Iterator[list[Plane]]:
    """GGUF blocks as their 4-bit planes (:func:`~smysl.qwen3.ggml_quants.planes`),
    :func:`pack_rows` rows at a time."""
    step = pack_rows(t.shape[1])
    return (planes(t.slice_rows(a, a + step)) for a in range(0, t.shape[0], step))


def _scale_zero(chunk: list[Plane]) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's planes side by side as the int4 layers store them: float32 ``scale`` and
    ``zero`` [rows, P * in / 32], each weight ``(q - 8) * scale + zero`` (= ``scale * q -
    mins``)."""
    scale = torch.cat([p.scale for p in chunk], 1)
    return scale, 8 * scale - torch.cat([p.mins for p in chunk], 1)


class Int4Linear(nn.Module):
    """Weights as one or more 4-bit planes in groups of 32 input columns, ``w = sum over planes
    of (q - 8) * scale + zero`` per group (torch's ``_weight_int4pack_mm_for_cpu``; activations,
    scales and zeros bfloat16).

    From GGUF blocks (:meth:`from_blocks`) the planes are :func:`~smysl.qwen3.ggml_quants.planes`:
    a Q4_K matrix is its own sub-blocks; Q8_0 and Q5_K are two planes, exactly; Q6_K, Q3_K,
    Q2_K and the IQ types below 4 bits two planes of an 8-bit re-coding. From float weights
    (:meth:`from_float`) each group is one plane quantised over its min..max. P planes are
    packed side by side as one ``[out, P * in]`` matrix and the input repeated P times: one
    kernel call.
    """

    def __init__(self, chunks: Iterable[list[Plane]], shape: tuple[int, int]) -> None:
        """``chunks``: the planes of consecutive row ranges of :func:`pack_rows` rows (the
        last may be shorter). The kernel packs blocks of 64 rows independently, so packing chunk
        by chunk is packing the whole, with one chunk's int32 codes in memory instead of the
        layer's (a gate|up of the 8B: 32 MB instead of 400 MB)."""
        super().__init__()
        self.out_features, self.in_features = shape
        packed, scale_zero = [], []
        for chunk in chunks:
            q = torch.cat([p.q for p in chunk], 1).to(torch.int32)  # [rows, P * in]
            packed.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2))
            scale, zero = _scale_zero(chunk)
            scale_zero.append(torch.stack([scale.t(), zero.t()], -1).to(torch.bfloat16))
        self.packed = torch.cat(packed)
        self.scale_zero = torch.cat(scale_zero, 1).contiguous()  # [P * in / 32, out, 2]
        self.planes = self.scale_zero.shape[0] * GROUP // self.in_features  # P

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Int4Linear:
        return cls(float_planes(w), (w.shape[0], w.shape[1]))

    @classmethod
    def from_blocks(cls, t: QuantTensor) -> Int4Linear:
        return cls(block_planes(t), t.shape)

    #: Rows from which this layer dequantises (:func:`dequant_mm`); None: :data:`DEQUANT_ROWS`.
    #: ``smysl tune`` measures it per machine (:mod:`smysl.qwen3.tuning`).
    dequant_rows: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [M, in] -> [M, out] bf16: torch's int4 kernel below :data:`DEQUANT_ROWS` rows,
        above it a bf16 GEMM on weights dequantised for this call (:func:`dequant_mm`)."""
        a = pad_rows(x.to(torch.bfloat16))
        rows = DEQUANT_ROWS if self.dequant_rows is None else self.dequant_rows
        if a.shape[0] >= rows and dequantises(self.out_features):
            return dequant_mm(a, self.packed, self.scale_zero, self.in_features)[: x.shape[0]]
        if self.planes > 1:
            a = a.repeat(1, self.planes)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(a, self.packed, GROUP, self.scale_zero)
        return y[: x.shape[0]]


# ------------------------------------------------- int4 weights dequantised for large batches
#: Rows from which :class:`Int4Linear` dequantises its weights to bf16 for the call and runs a
#: bf16 GEMM instead of torch's int4 kernel. On an AVX512-BF16 EPYC (2 threads) the int4
#: kernel ran at ~320 GFLOP/s at any row count, the bf16 GEMM at 400 (64 rows) to 850 (1,024),
#: and dequantising cost ~0.3 ns per weight: a 4096 x 24576 weight took 0.65 s with the int4
#: kernel at 1,024 rows, 0.27 s dequantised (docs/benchmarks.md). The two regimes round
#: differently (weights rounded to bf16 once here), so a text's vector moves in the last bits
#: between a batch below and one above this size; within the kernel's regime rows are
#: batch-invariant, within this one where oneDNN's bf16 kernel ignores the row count (not with
#: AMX: docs/engine.md).
DEQUANT_ROWS = 192
#: Weights dequantised at a time (a column block of the transposed weight): the workspace,
#: one per process, stays ~42 MiB (float32 sums, a second plane, bf16 copy, codes), and its bf16
#: block stays in cache for its GEMM; 4M was as fast as 8M-32M on an 8B gate|up and down.
DEQUANT_ELEMENTS = 1 << 22


@functools.cache
def _block_rows() -> int:
    """Rows per block of torch's packed int4 layout on this CPU, 0 if it is not the one
    :func:`dequant_mm` reads. ATen packs ``B`` rows (64 on AVX-512, 32 on AVX2 builds) as
    ``[N / B, K, B / 2]`` bytes, byte ``i`` holding row ``i`` (low nibble) and row
    ``B / 2 + i`` (high); checked here on a random matrix rather than assumed."""
    q = torch.randint(0, 16, (128, 64), dtype=torch.int32,
                      generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
    for b in (64, 32):
        blocks = packed.view(128 // b, 64, b // 2)
        rows = torch.cat([blocks & 15, blocks >> 4], -1).permute(0, 2, 1).reshape(128, 64)
        if torch.equal(rows.to(torch.int32), q):
            return b
    return 0


@functools.cache
def dequantising() -> bool:
    """Whether :class:`Int4Linear` layers run large batches through :func:`dequant_mm` on
    this machine: where oneDNN computes bf16 natively (elsewhere bf16 GEMMs are emulated,
    ~100x slower than float32, and the int4 kernel stays) and torch packs int4 weights in the
    layout :func:`dequant_mm` reads. The rule for the layers and the engine's slice size."""
    return _block_rows() > 0 and onednn_bf16()


def dequantises(out_features: int) -> bool:
    """:func:`dequantising`, for an ``out_features``-row layer: its rows must be whole blocks
    of the packed layout."""
    return dequantising() and out_features % _block_rows() == 0


#: The scratch of :func:`dequant_mm`: one set per process (~42 MiB), used under the lock. Per
#: thread, every server worker thread that ever ran a large batch would keep its own.
_workspace: dict[str, torch.Tensor] = {}
_workspace_lock = threading.Lock()


def _buffer(name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    """A reusable scratch tensor of ``n`` elements (callers hold :data:`_workspace_lock`):
    allocating the ~32 MiB afresh on every call cost more in page faults than dequantising
    into it (0.10 s vs 0.03 s for a 4096 x 24576 weight)."""
    buf = _workspace.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        with torch.inference_mode(False):  # a normal tensor: usable in and outside the mode
            buf = _workspace[name] = torch.empty(n, dtype=dtype)
    return buf[:n]


def dequant_mm(a: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor, k: int
               ) -> torch.Tensor:
    """``a @ W.T`` for an :class:`Int4Linear`'s packed weight: a: [M, K] bf16 -> [M, N] bf16.

    ``W.T`` is rebuilt a block of columns at a time: each weight ``sum over planes of (q - 8)
    * scale + zero`` in float32, rounded to bf16 once, then multiplied by oneDNN's bf16 GEMM
    into those columns of the output.
    """
    with _workspace_lock:  # two engines in one process (embedder, reranker) take turns
        return _dequant_mm(a, packed, scale_zero, k)


def _dequant_mm(a: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor, k: int
                ) -> torch.Tensor:
    n, b = packed.shape[0], _block_rows()
    planes = scale_zero.shape[0] * GROUP // k
    blocks = packed.view(n // b, planes * k, b // 2)  # [N / B, P * K, B / 2] bytes
    cols = max(b, DEQUANT_ELEMENTS // k // b * b)
    y = a.new_empty(a.shape[0], n)
    for c0 in range(0, n, cols):
        c1 = min(n, c0 + cols)
        nb, width = (c1 - c0) // b, c1 - c0
        codes = _buffer("codes", nb * k * b // 2, torch.uint8).view(nb, k, b // 2)
        w = _buffer("w", k * width, torch.float32)
        plane = _buffer("plane", k * width, torch.float32) if planes > 1 else w
        scale = _buffer("scale", k // GROUP * width, torch.float32).view(k // GROUP, width)
        offset = _buffer("offset", k // GROUP * width, torch.float32).view(k // GROUP, width)
        for p in range(planes):
            part = blocks[c0 // b : c1 // b, p * k : (p + 1) * k]  # [nb, K, B / 2]
            dst = (w if p == 0 else plane).view(k, nb, 2, b // 2)  # W.T's [K, width]
            dst[:, :, 0] = torch.bitwise_and(part, 15, out=codes).permute(1, 0, 2)
            dst[:, :, 1] = torch.bitwise_right_shift(part, 4, out=codes).permute(1, 0, 2)
            sz = scale_zero[p * k // GROUP : (p + 1) * k // GROUP, c0:c1]  # [K / 32, width, 2]
            scale.copy_(sz[..., 0])
            torch.mul(scale, -8, out=offset).add_(sz[..., 1])  # (q - 8) * s + z == q * s + offset
            dst.view(k // GROUP, GROUP, width).mul_(scale[:, None]).add_(offset[:, None])
            if p:
                w.add_(plane)
        wt = _buffer("wt", k * width, torch.bfloat16).copy_(w).view(k, width)
        y[:, c0:c1] = torch.mm(a, wt)
    return y


class Int4GemmLinear(nn.Module):
    """The planes of :class:`Int4Linear` for CUDA, where torch's CPU int4 kernel does not run
    (torch's CUDA int4 kernel takes another packed layout and is not used yet): codes as plain
    nibbles ``[out, P * in / 2]`` (two columns per byte), bf16 scale and zero ``[2, out, P *
    in / 32]``; every call rebuilds the bf16 weight a block of rows at a time (``(q - 8) *
    scale + zero`` summed over planes in float32, rounded once: the weights of
    :func:`dequant_mm`) and runs the device's dense bf16 GEMM. Memory as the CPU layer's: the
    8B's Q4_K_M matrices take ~4.3 GB; a call adds one block's scratch. The rebuild moves ~30
    bytes per weight whatever the batch, so small batches pay it in full (unmeasured)."""

    #: Weights (over all planes) rebuilt per block: ~0.3 GB of codes, float32 and bf16 scratch.
    BLOCK = 1 << 25

    def __init__(self, chunks: Iterable[list[Plane]], shape: tuple[int, int],
                 device: torch.device) -> None:
        super().__init__()
        self.out_features, self.in_features = shape
        codes, scale_zero = [], []
        for chunk in chunks:
            q = torch.cat([p.q for p in chunk], 1).to(torch.uint8)  # [rows, P * in], 0..15
            codes.append((q[:, 0::2] | (q[:, 1::2] << 4)).to(device))
            scale, zero = _scale_zero(chunk)
            scale_zero.append(torch.stack([scale, zero]).to(torch.bfloat16).to(device))
        self.codes: torch.Tensor
        self.scale_zero: torch.Tensor
        self.register_buffer("codes", torch.cat(codes), persistent=False)
        self.register_buffer("scale_zero", torch.cat(scale_zero, 1), persistent=False)
        self.planes = self.scale_zero.shape[2] * GROUP // self.in_features  # P

    @classmethod
    def from_float(cls, w: torch.Tensor, device: torch.device) -> Int4GemmLinear:
        return cls(float_planes(w), (w.shape[0], w.shape[1]), device)

    @classmethod
    def from_blocks(cls, t: QuantTensor, device: torch.device) -> Int4GemmLinear:
        return cls(block_planes(t), t.shape, device)

    def weight(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the weight, bf16 ``[rows, in]``."""
        c = self.codes[start:stop]  # [r, P * in / 2]
        r, k, p = c.shape[0], self.in_features, self.planes
        q = torch.stack([c & 15, c >> 4], -1).view(r, p * k // GROUP, GROUP).float()
        s, z = self.scale_zero[:, start:stop].float()  # [r, P * in / 32] each
        w = q.mul_(s[..., None]).add_((z - 8 * s)[..., None])  # (q - 8) * s + z
        w = w.view(r, p, k).sum(1) if p > 1 else w.view(r, k)
        return w.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [M, in] -> [M, out] bf16."""
        a = x.to(torch.bfloat16)
        n = self.out_features
        step = max(1, self.BLOCK // (self.planes * self.in_features))
        if step >= n:
            return a @ self.weight(0, n).t()
        y = a.new_empty(a.shape[0], n)
        for r0 in range(0, n, step):
            y[:, r0 : r0 + step] = a @ self.weight(r0, r0 + step).t()
        return y


class Int8WeightLinear(nn.Module):
    """8-bit weights, symmetric per output channel, bf16 activations (torch's
    ``_weight_int8pack_mm``): the layers of a 4-bit model that the int4 kernel cannot take
    (shapes, float tensors of a GGUF file)."""

    def __init__(self, w: torch.Tensor | QuantTensor) -> None:
        """``w``: a float weight, or GGUF blocks (dequantised :func:`pack_rows` rows at a
        time, so a float copy of the whole layer never exists)."""
        super().__init__()
        self.out_features, self.in_features = w.shape
        self.weight_q, scales = _weight_codes(w)
        self.scales = scales.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(pad_rows(x.to(torch.bfloat16)), self.weight_q,
                                               self.scales)
        return y[: x.shape[0]]


class StackedLinear(nn.Module):
    """Layers stacked along the output rows: a fused weight whose parts are of different GGUF
    types (a q|k|v whose v is Q6_K) keeps each part in its own form."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], -1)


def int4_linear(gguf: bool, device: torch.device | None = None
                ) -> Callable[[Weight], nn.Module]:
    """The ``quantize="int4"`` layer constructor. From a safetensors checkpoint each float
    weight becomes 4-bit by group min/max where the kernel takes the shape, else 8-bit
    weight-only. From a GGUF file (``gguf``) quantised blocks become 4-bit planes
    (:func:`~smysl.qwen3.ggml_quants.planes`: exact for Q8_0/Q5_K/Q4_K), never re-quantised
    to 4 bits; float tensors become 8-bit weight-only. On CUDA (``device``) the planes are
    :class:`Int4GemmLinear` layers there, and what they cannot take stays bf16."""

    def make(t: Weight) -> nn.Module:
        if isinstance(t, QuantStack):
            return StackedLinear([make(p) for p in t.parts])
        if device is not None and device.type == "cuda":
            return make_cuda(t, device, gguf)
        fits = int4_fits(tuple(t.shape))
        if isinstance(t, QuantTensor):
            return Int4Linear.from_blocks(t) if fits else Int8WeightLinear(t)
        if gguf or not fits:
            return Int8WeightLinear(t)
        return Int4Linear.from_float(t)

    return make


def make_cuda(t: torch.Tensor | QuantTensor, device: torch.device, gguf: bool) -> nn.Module:
    """One ``quantize="int4"`` layer on CUDA: :class:`Int4GemmLinear` where the columns come
    in groups of 32 (every Qwen3 matrix), else — and for a GGUF file's float tensors, never
    re-quantised — a bf16 :class:`~smysl.qwen3.model.Linear`."""
    from smysl.qwen3.model import Linear

    if t.shape[1] % GROUP == 0 and (isinstance(t, QuantTensor) or not gguf):
        return (Int4GemmLinear.from_blocks(t, device) if isinstance(t, QuantTensor)
                else Int4GemmLinear.from_float(t, device))
    w = t.dequantize(torch.bfloat16) if isinstance(t, QuantTensor) else t
    with torch.device("meta"):
        layer = Linear(t.shape[1], t.shape[0])
    layer.weight = nn.Parameter(w.to(device=device, dtype=torch.bfloat16), requires_grad=False)
    return layer


class QuantEmbedding(nn.Module):
    """A GGUF embedding table kept as its blocks; a lookup dequantises the rows it needs."""

    def __init__(self, table: QuantTensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.table, self.dtype = table, dtype
        self.num_embeddings = table.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.rows(ids.long(), self.dtype)
