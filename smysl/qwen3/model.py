"""A native Qwen3 encoder forward pass over packed (varlen) sequences.

Shapes: ``T`` tokens of ``B`` sequences packed into one stream, ``H`` hidden size, ``Hq``/``Hkv``
query/key-value heads of size ``D``. There is no padding in the stream: each layer's linear
layers run on ``[T, H]``, and attention is causal *within* each sequence only.

Numerics follow the reference (transformers' Qwen3Model): RMSNorm in float32, q_norm/k_norm per
head before RoPE (non-interleaved, ``rotate_half``), GQA, SwiGLU, no biases. One deliberate
difference: the residual stream is kept in float32 whatever the matmul dtype, which matches the
reference exactly in fp32 and keeps bf16/fp16 from overflowing (the 8B's massive activations).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smysl.qwen3.cpu import amx_bf16, onednn_bf16
from smysl.qwen3.hub import DEFAULT_POSITIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Qwen3Config:
    """The architecture fields of a Qwen3 ``config.json`` that the forward pass needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = DEFAULT_POSITIONS

    @property
    def parameters(self) -> int:
        """Parameters of the encoder (no output head): what a float model holds."""
        h, d, ffn = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        layer = h * (q + 2 * kv) + q * h + 3 * h * ffn + 2 * h + 2 * d
        return self.vocab_size * h + self.num_hidden_layers * layer + h

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Qwen3Config:
        arch = d.get("model_type")
        if arch not in (None, "qwen3"):
            raise ValueError(f"not a Qwen3 checkpoint: model_type={arch!r}")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"unsupported rope scaling {rope!r}")
        theta = d.get("rope_theta", rope.get("rope_theta", 1_000_000.0))
        # fields the forward pass would otherwise ignore without a word (other vectors)
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):  # transformers' two names of one function
            raise ValueError(f"unsupported hidden_act {act!r}: Qwen3's MLP is SwiGLU (silu)")
        layers = int(d["num_hidden_layers"])
        types = d.get("layer_types")
        # transformers' Qwen3Config: layers from max_window_layers on (default 28) slide
        slides = (any(t != "full_attention" for t in types) if types
                  else bool(d.get("use_sliding_window")) and d.get("sliding_window") is not None
                  and int(d.get("max_window_layers", 28)) < layers)
        if slides:
            raise ValueError(f"unsupported sliding-window attention (sliding_window="
                             f"{d.get('sliding_window')!r}): every layer here attends to the "
                             "whole text, as Qwen3-Embedding's do")
        heads = int(d["num_attention_heads"])
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads", heads)),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_position_embeddings=int(d.get("max_position_embeddings", DEFAULT_POSITIONS)),
        )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None,
                exact: bool = True) -> torch.Tensor:
        """x: [..., dim] -> same shape in ``out_dtype`` (default x's). ``exact``: the
        reference's operation order; else one float32 chain rounded once (see
        :attr:`Qwen3Encoder.exact_qk`): 0.65x the time on CPU, and closer to float64."""
        dtype = out_dtype or x.dtype
        if x.dtype == dtype == torch.float32:
            # one call, bit-identical to the reference's x * rsqrt(mean + eps) * weight; a
            # bf16/fp16 model's final norm of the float32 stream too, with the weight cast
            # exactly (uncast, torch warns and takes its unfused path: the same numbers)
            return F.rms_norm(x, (x.shape[-1],), self.weight.float(), self.eps)
        x = x.float()
        if not exact:  # sum of squares as a squared norm: one reduction, no temporary
            r = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            r = r.square_().div_(x.shape[-1]).add_(self.eps).rsqrt_()
            return (x * self.weight.float()).mul_(r).to(dtype)
        # reference order: normalise in fp32, cast, then scale in the weight's dtype
        x32 = F.rms_norm(x, (x.shape[-1],), None, self.eps)
        return self.weight.to(dtype) * x32.to(dtype)


#: CPU GEMM picks other kernels (other summation orders) for fewer rows than this; padding
#: small inputs up to it makes every row's result independent of the batch it came in.
MIN_ROWS = 16
#: Row counts are padded to a multiple of this at the least (see :func:`padded_rows`).
ROW_STEP = 16
#: Padded sizes per doubling of a size (see :func:`padded_rows`).
STEPS_PER_OCTAVE = 16


def padded_rows(m: int) -> int:
    """The size a CPU GEMM dimension of ``m`` runs at: at least :data:`MIN_ROWS`, then a
    multiple of :data:`ROW_STEP` up to 256 and :data:`STEPS_PER_OCTAVE` sizes per doubling
    above (<= 6.25% of zero rows).

    oneDNN builds a kernel for every GEMM shape it meets and keeps it in two caches of 1,024
    entries, ~0.7 MiB each, for the life of the process: a server fed mixed lengths grew
    without end (0.6B widths in bf16, 1,000 random batches: 926 -> 2,404 MiB and rising;
    linear row counts, attention's key and query counts alike). With sizes from this short
    list, the shapes a model can meet are few whatever the traffic: 80 row counts up to a
    4,096-token slice, 128 key counts up to 32K."""
    if m <= MIN_ROWS:
        return MIN_ROWS
    step = max(ROW_STEP, (1 << (m.bit_length() - 1)) // STEPS_PER_OCTAVE)
    return -(-m // step) * step


def pad_rows(x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """x: [M, K] -> [n, K], by default [padded_rows(M), K] (zero rows appended; callers slice
    ``[:M]``)."""
    m = x.shape[0]
    n = padded_rows(m) if n is None else n
    return x if n == m else torch.cat([x, x.new_zeros(n - m, *x.shape[1:])])


class Linear(nn.Module):
    """Bias-free linear layer: on CUDA, for fp16 on CPU, where oneDNN cannot pack (see
    ``cpu.packs_linear``) and for models built without a layer factory; otherwise the engine's
    loader makes a :class:`PackedLinear` or a quantised layer (``smysl.qwen3.quantize``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        if x.is_cuda:  # the padding is for CPU GEMM's kernel choice; on CUDA it is a launch
            return F.linear(x, self.weight)
        return F.linear(pad_rows(x), self.weight)[: x.shape[0]]


class PackedLinear(nn.Module):
    """A CPU linear layer with its weight reordered once into oneDNN's blocked layout (what
    inductor's CPU weight prepacking does): no per-call packing, so small row counts run at
    the large-GEMM rate. bf16 results are bit-identical to ``F.linear``'s; float32 differs in
    summation order only. Batch invariance relies on each row's result not depending on the
    row count: fewer rows than :data:`MIN_ROWS` are padded up to it (float32 at the 0.6B's
    o_proj and down_proj shapes summed a lone row in another order, so a text embedded alone
    differed from the same text in a batch by ~2e-8), and where bf16 kernels differ by row
    count (AMX) rows are padded within the class of a :data:`ROW_TILE`-row call
    (:func:`same_bit_rows`); tested at the real shapes."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach()  # [out, in]
        self.out_features, self.in_features = w.shape
        self.dtype = w.dtype
        # an opaque oneDNN tensor (layout torch._mkldnn), not a parameter: nothing reads it back
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        m = x.shape[0]
        sizes = same_bit_rows(self) if self.dtype == torch.bfloat16 else None
        if sizes is None:
            return self.gemm(pad_rows(x))[:m]
        if m > ROW_TILE:  # tiles of ROW_TILE rows, the last one padded like a short input
            return torch.cat([self(x[s : s + ROW_TILE]) for s in range(0, m, ROW_TILE)])
        return self.gemm(pad_rows(x, next(n for n in sizes if n >= m)))[:m]

    def gemm(self, x: torch.Tensor) -> torch.Tensor:
        """x: [M, in] in the weight's dtype -> [M, out], one oneDNN call."""
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, None, "none",
                                                  [], "")


#: Rows per GEMM call of a :class:`PackedLinear` whose kernels differ by row count (see
#: :func:`same_bit_rows`): larger inputs run in tiles of this many rows. 256 rows ran bf16
#: GEMMs at 0.9-1.0x the rate of 1,024 on a Xeon with AMX (2 threads, 0.6B shapes).
ROW_TILE = 256
_SAME_BITS: dict[tuple[int, int, torch.dtype, int], tuple[int, ...] | None] = {}


def _bf16_layers(model: nn.Module) -> list[PackedLinear]:
    """One bf16 :class:`PackedLinear` of ``model`` per weight shape (kernels go by shape)."""
    return list({(m.out_features, m.in_features): m for m in model.modules()
                 if isinstance(m, PackedLinear) and m.dtype == torch.bfloat16}.values())


def _probe(layer: PackedLinear) -> torch.Tensor:
    """A fixed random [ROW_TILE, in] input for ``layer``'s kernel checks."""
    return torch.randn(ROW_TILE, layer.in_features,
                       generator=torch.Generator().manual_seed(0)).to(layer.dtype)


def _probe_layer(layer: PackedLinear) -> PackedLinear:
    """A layer of ``layer``'s shape and dtype with a fixed random weight, for its kernel
    checks: oneDNN picks a kernel by shape, and a weight's own values can hide a change of
    kernel. A dequantised GGUF weight has few significant bits, so most sums come out exact in
    either order: on a Xeon with AMX a Q8_0 file's down_proj passed 16 rows as giving a
    256-row call's bits, and its texts alone differed from the same in a batch by 2.8e-3.
    Built once per shape inside :func:`shared_probes`."""
    key = (layer.out_features, layer.in_features, layer.dtype)
    if _PROBES is not None and key in _PROBES:
        return _PROBES[key]
    g = torch.Generator().manual_seed(1)
    built = PackedLinear(torch.randn(layer.out_features, layer.in_features, generator=g,
                                     dtype=layer.dtype))
    if _PROBES is not None:
        _PROBES[key] = built
    return built


#: The probe layers of the :func:`shared_probes` block running, by shape; None outside one.
_PROBES: dict[tuple[int, int, torch.dtype], PackedLinear] | None = None


@contextlib.contextmanager
def shared_probes() -> Iterator[None]:
    """Within the block, the kernel checks (:func:`same_bits_on`, :func:`same_bit_rows`)
    build each shape's probe layer once (an 8B's four: ~1 s at load), freed after it."""
    global _PROBES
    _PROBES = {}
    try:
        yield
    finally:
        _PROBES = None


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's thread count in this thread set to ``n`` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def warm_same_bit_rows(model: nn.Module, threads: set[int]) -> None:
    """:func:`same_bit_rows` measured for each bf16 :class:`PackedLinear` shape of ``model``
    at each of these thread counts."""
    for n in sorted(threads):
        with _threads(n):
            for layer in _bf16_layers(model):
                same_bit_rows(layer)


def same_bits_on(model: nn.Module, threads: tuple[int, ...]) -> bool:
    """Whether every bf16 :class:`PackedLinear` shape of ``model`` gives a
    :data:`ROW_TILE`-row input the same bits at each of these thread counts. With AMX-BF16
    the 0.6B's down_proj did not on 1 and 2 threads (a Xeon): oneDNN's kernel follows the
    thread count too."""
    for shape in _bf16_layers(model):
        x, layer = _probe(shape), _probe_layer(shape)
        outs = []
        for n in threads:
            with _threads(n):
                outs.append(layer.gemm(x))
        if any(not torch.equal(o, outs[0]) for o in outs[1:]):
            return False
    return True


def same_bit_rows(layer: PackedLinear) -> tuple[int, ...] | None:
    """The row counts up to :data:`ROW_TILE` (of those :func:`padded_rows` gives) at which
    ``layer``'s GEMM gives each row the bits it gets in a call of ``ROW_TILE`` rows, at this
    thread's torch thread count; None where every such count does (then rows are only padded
    by :func:`padded_rows`). Measured once per weight shape and thread count.

    oneDNN picks its kernel (its summation order) by the row count. On AVX-512 and AVX2 CPUs
    every count from 16 rows on gave the same bits; with AMX-BF16 they fall into classes (a
    Xeon, 2 threads, the 0.6B's down_proj: 16-32, 48-144, 192-256 rows), so a text's bf16
    vector moved in its last bits with the batch it came in. Padded to a count of the
    ``ROW_TILE`` class (a short input's down_proj runs 192 rows), it does not. Measured with
    a random weight of the layer's shape (:func:`_probe_layer`)."""
    key = (layer.out_features, layer.in_features, layer.dtype, torch.get_num_threads())
    if key not in _SAME_BITS:
        x, probe = _probe(layer), _probe_layer(layer)
        want = probe.gemm(x)
        sizes = sorted({padded_rows(m) for m in range(1, ROW_TILE + 1)})
        same = tuple(n for n in sizes if torch.equal(probe.gemm(x[:n]), want[:n]))
        _SAME_BITS[key] = None if len(same) == len(sizes) else same
    return _SAME_BITS[key]


class Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config) -> None:
        super().__init__()
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        # q, k and v projections fused into one matmul: [H] -> [(Hq + 2 Hkv) D].
        self.qkv_proj = Linear(cfg.hidden_size, (self.hq + 2 * self.hkv) * self.d)
        self.o_proj = Linear(self.hq * self.d, cfg.hidden_size)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, q: torch.Tensor,
                k: torch.Tensor, v: torch.Tensor) -> None:
        """x: [t, H] normed -> written into q [t, Hq, D], k and v [t, Hkv, D] (the attention
        dtype), q/k normed and rotated in the reference's operation order (:func:`apply_rope`;
        cos/sin: [t, D] in the matmul dtype)."""
        t = x.shape[0]
        qkv = self.qkv_proj(x)  # [t, (Hq + 2 Hkv) D]
        qx, kx, vx = qkv.split([self.hq * self.d, self.hkv * self.d, self.hkv * self.d], dim=-1)
        for part, norm, out in ((qx, self.q_norm, q), (kx, self.k_norm, k)):
            out.copy_(apply_rope(norm(part.view(t, -1, self.d)), cos, sin))
        v.copy_(vx.view(t, self.hkv, self.d))

    def qk_weight(self) -> torch.Tensor:
        """The q_norm / k_norm weights per group of Hkv heads of the q|k columns:
        [Hq / Hkv + 1, 1, D] float32 (the query groups', then the keys')."""
        w: list[torch.Tensor] = [self.q_norm.weight] * (self.hq // self.hkv)
        w.append(self.k_norm.weight)
        return torch.stack(w).float()[:, None]

    def project_fused(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      qk: torch.Tensor, v: torch.Tensor, weight: torch.Tensor) -> None:
        """As :meth:`project`, with q and k as the two parts of one buffer qk [t, Hq + Hkv, D],
        normed and rotated together by :func:`norm_rope` (one float32 chain, rounded once).
        cos/sin: [t, D] float32; weight: :meth:`qk_weight`."""
        t, n = x.shape[0], (self.hq + self.hkv) * self.d
        qkv = self.qkv_proj(x)  # [t, (Hq + 2 Hkv) D]
        grouped = (t, -1, self.hkv, self.d)  # [t, G, Hkv, D]: heads that share a weight row
        norm_rope(qkv[:, :n].view(grouped), weight, self.q_norm.eps, cos, sin, qk.view(grouped))
        v.copy_(qkv[:, n:].view(t, self.hkv, self.d))


#: float16 only: a row of the SwiGLU output whose largest magnitude passes this is scaled
#: down by a power of two before the down projection, and its output scaled back up in
#: float32 (:meth:`MLP.fp16`). 64x below float16's largest value, so the projection's own
#: output has room too; ordinary rows stay far below it and are computed as the reference's.
FP16_ROW_LIMIT = 1024.0


class MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size)  # fused gate|up
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [t, H] -> [t, H] in x's dtype, float32 for float16 (:meth:`fp16`)."""
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        if gate.dtype == torch.float16:
            return self.fp16(gate, up)
        return self.down_proj(F.silu(gate) * up)

    def fp16(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``down_proj(silu(gate) * up)`` for float16 ``gate``/``up`` [t, I] -> [t, H] float32,
        without the overflow of the reference's float16 chain. float16 ends at 65,504, and a
        Qwen model's massive-activation tokens pass it in the SwiGLU output (the first
        non-finite value of a float16 pass is there: llama.cpp #26044; ~50K out of a Qwen2
        down projection, auto-round #218), which the reference rounds to float16 as inf: NaN
        downstream. Each row over :data:`FP16_ROW_LIMIT` is scaled by a power of two, so its
        values round as the reference's would, save those that fall below float16's normal
        range (6.1e-5 times the scale); rows within it are the reference's to the bit."""
        # float32 and exact: a product of two float16 values fits float32's mantissa
        prod = F.silu(gate).float().mul_(up)
        amax = prod.abs().amax(dim=1, keepdim=True)  # [t, 1]
        # 0 for rows within the limit (log2(0) = -inf too); an inf row stays non-finite
        k = torch.log2(amax / FP16_ROW_LIMIT).ceil_().clamp_(min=0)
        y = self.down_proj(prod.mul_(torch.exp2(-k)).half())
        return y.float().mul_(torch.exp2(k))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                plan: Plan, dt: torch.dtype, last: torch.Tensor | None = None,
                chunk: int = 4096, attn_dt: torch.dtype | None = None, exact: bool = True
                ) -> torch.Tensor:
        """h: [T, H] float32 residual stream (updated in place); ``dt`` is the matmul dtype,
        ``attn_dt`` the dtype q/k/v are stored and attended in (default ``dt``); ``exact``:
        see :attr:`Qwen3Encoder.exact_qk` (``rope`` is in ``dt`` if set, else float32).

        Everything but attention is per token, so it runs over ``chunk``-token slices: for one
        long input, memory is q/k/v and the attention output plus one chunk's temporaries.
        """
        a, t = self.self_attn, h.shape[0]
        adt = attn_dt or dt
        v = h.new_empty(t, a.hkv, a.d, dtype=adt)
        cos, sin = rope  # [T, D] each: in dt if exact, else float32
        qk: torch.Tensor | None = None
        if exact:
            q = h.new_empty(t, a.hq, a.d, dtype=adt)
            k = h.new_empty(t, a.hkv, a.d, dtype=adt)
            for s in range(0, t, chunk):
                e = s + chunk
                a.project(self.input_layernorm(h[s:e], dt), cos[s:e], sin[s:e], q[s:e],
                          k[s:e], v[s:e])
        else:  # q and k: views of one buffer, normed and rotated in one pass
            qk = h.new_empty(t, a.hq + a.hkv, a.d, dtype=adt)
            q, k = qk[:, : a.hq], qk[:, a.hq :]
            weight = a.qk_weight()
            for s in range(0, t, chunk):
                e = s + chunk
                a.project_fused(self.input_layernorm(h[s:e], dt, exact=False), cos[s:e],
                                sin[s:e], qk[s:e], v[s:e], weight)
        # final layer: only each sequence's last query is needed downstream ([B, Hq, D])
        out = plan.attend(q, k, v) if last is None else plan.attend_last(q[last], k, v)
        del q, k, v, qk
        if last is not None:
            h = h[last]
        for s in range(0, h.shape[0], chunk):
            hs = h[s : s + chunk]
            # in-place adds promote to float32 in the same kernel: no separate cast launch
            hs += a.o_proj(out[s : s + chunk].flatten(1))
            hs += self.mlp(self.post_attention_layernorm(hs, dt, exact))
        return h


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved RoPE. x: [T, heads, D]; cos/sin: [T, D] (the half-frequencies repeated)."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor,
              sin: torch.Tensor, out: torch.Tensor) -> None:
    """Per-head RMSNorm (q_norm / k_norm) and RoPE as one float32 chain, rounded once into
    ``out``.

    x: [t, ..., D] (a view of the qkv output, any float dtype); weight: float32, broadcastable
    to x's dims after the first (e.g. [G, 1, D] for x [t, G, Hkv, D]: a weight row per group
    of heads); cos/sin: [t, D] float32 (the half-frequencies repeated); out: shaped as x.

    The same maths as ``apply_rope(RMSNorm(x))`` in another order: with ``r`` each head's
    ``rsqrt(mean(x^2) + eps)`` and halves ``x = (x1, x2)``, ``c``/``s`` the half tables,
    ``out = r * (x1 w1 c - x2 w2 s, x2 w2 c + x1 w1 s)``, the weight folded into the
    [t, G, D] cos/sin tables: ~20 calls for all of q and k (the reference's chain is ~12 passes
    per tensor, rounding to the matmul dtype after the norm, the weight and each RoPE step);
    closer to float64 too (bf16: max error 1.6e-2 vs 5.7e-2 on unit-scale heads). Used on CPU
    by every path but the unquantised float32 one (see :attr:`Qwen3Encoder.exact_qk`).
    """
    d = x.shape[-1]
    h = d // 2
    table = (x.shape[0],) + (1,) * (x.dim() - 2) + (d,)  # cos/sin broadcast over the heads
    x = x.float()  # one cast up front (mixed-dtype ops cast their inputs on every call)
    # sum of squares as a squared norm: one reduction, no [t, ..., D] temporary
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(d).add_(eps).rsqrt_()
    cw = cos.view(table) * weight  # (c w1, c w2)
    sw = sin.view(table) * torch.cat((weight[..., h:], weight[..., :h]), -1)  # (s w2, s w1)
    y = x * cw
    y[..., :h].addcmul_(x[..., h:], sw[..., :h], value=-1)
    y[..., h:].addcmul_(x[..., :h], sw[..., h:])
    torch.mul(y, r, out=out)


class Plan(Protocol):
    """Causal attention within each sequence of a packed stream, for one forward pass.

    :class:`AttentionPlan` on CPU; :class:`smysl.qwen3.cuda.VarlenPlan` (one varlen
    FlashAttention call per layer) on CUDA.
    """

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq, D]."""
        ...

    def attend_last(self, q_last: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                    ) -> torch.Tensor:
        """Each sequence's last query over its whole sequence. q_last: [B, Hq, D] -> same."""
        ...


class AttentionPlan:
    """The CPU plan: :func:`causal_attention` (float32: SDPA's fused kernel, no L x L matrix;
    bf16: blocked GEMMs) over groups of sequences of equal length.

    Only equal lengths share a group: right-padding would need no mask (a causal query never
    sees later positions), but the kernel's row reductions change with the padded width, and
    exact grouping keeps a text's vector bit-identical whatever batch it arrives in. Extra
    calls cost nothing next to CPU matmuls. Equal lengths that are not contiguous in the
    stream are gathered into a ``[B, L]`` batch and scattered back.
    """

    def __init__(self, lengths: list[int], device: torch.device) -> None:
        self.lengths = lengths
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        self.starts = starts
        self.total = starts[-1]
        self.device = device
        by_length: dict[int, list[int]] = {}
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            by_length.setdefault(lengths[i], []).append(i)
        self.groups = [(members, n, *self._indices(members))
                       for n, members in by_length.items()]

    def _indices(self, members: list[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(gather, dest) for a padded group; (None, None) when the group is a contiguous run of
        equal lengths in the stream (the scheduler sorts batches by length): a free view."""
        width = self.lengths[members[0]]
        first = min(self.starts[m] for m in members)
        if all(self.lengths[m] == width for m in members) and sorted(
            self.starts[m] for m in members
        ) == list(range(first, first + width * len(members), width)):
            return None, None
        width = self.lengths[members[0]]
        # gather: [B, L] index into the stream, padding -> T (a zero row appended at run time)
        gather = torch.full((len(members), width), self.total, dtype=torch.long)
        dest = []
        for b, m in enumerate(members):
            n, s = self.lengths[m], self.starts[m]
            gather[b, :n] = torch.arange(s, s + n)
            dest.append(torch.arange(s, s + n))
        return gather.to(self.device), torch.cat(dest).to(self.device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq, D]."""
        if len(self.groups) == 1 and self.groups[0][2] is None:  # one run of equal lengths
            n = len(self.lengths)
            qb, kb, vb = (x.unflatten(0, (n, -1)) for x in (q, k, v))
            return causal_attention(qb, kb, vb).flatten(0, 1)
        out = q.new_empty(q.shape)
        padded: tuple[torch.Tensor, ...] = ()
        for members, width, gather, dest in self.groups:
            if gather is None:  # contiguous equal lengths: [B * L] -> [B, L] views
                s, e = min(self.starts[m] for m in members), width * len(members)
                qb, kb, vb = (x[s : s + e].unflatten(0, (len(members), width)) for x in (q, k, v))
                out[s : s + e] = causal_attention(qb, kb, vb).flatten(0, 1)
                continue
            if not padded:  # append one zero row that padding positions gather
                padded = tuple(torch.cat([x, x.new_zeros(1, *x.shape[1:])]) for x in (q, k, v))
            qz, kz, vz = padded
            o = causal_attention(qz[gather], kz[gather], vz[gather])  # [B, L, Hq, D]
            valid = gather.flatten() < self.total
            out.index_copy_(0, dest, o.flatten(0, 1)[valid])  # type: ignore[arg-type]
        return out

    def attend_last(self, q_last: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention for each sequence's last query only. q_last: [B, Hq, D] -> [B, Hq, D]."""
        out = q_last.new_empty(q_last.shape)
        for i, n in enumerate(self.lengths):
            s = self.starts[i]
            out[i] = attend_one(q_last[i], k[s : s + n], v[s : s + n])
        return out


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query over all of its keys (no mask: the last query sees its whole sequence).
    q: [Hq, D], k/v: [n, Hkv, D] -> [Hq, D].

    The query goes in :data:`ONE_QUERY_ROWS` times: SDPA's CPU kernel splits the keys of 1-3
    queries among torch's threads, so their float32 sums changed with the thread count (in
    ~2/3 of random cases, torch 2.13); from 4 queries on it did not (none in 480 cases at 1, 2
    and 4 threads). A vector then does not depend on the threads it ran under, nor on the
    lanes of a bulk call (``smysl.qwen3.lanes``): tested."""
    return sdpa(q.expand(ONE_QUERY_ROWS, *q.shape)[None], k[None], v[None], causal=False)[0, 0]


#: Copies of the query :func:`attend_one` attends with (see there).
ONE_QUERY_ROWS = 4


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int = 0
                     ) -> torch.Tensor:
    """q: [B, Lq, Hq, D], k/v: [B, offset + Lq, Hkv, D] -> [B, Lq, Hq, D]: query i sees keys
    0..offset + i (``offset`` > 0: a shared prefix before the queries).

    bf16 on a CPU whose oneDNN computes bf16 natively runs as batched GEMMs
    (:func:`gemm_attention`): torch's CPU flash kernel computes bf16 at its fp32 speed
    (~90-160 GFLOP/s on an AVX512-BF16 EPYC against ~950 for bf16 GEMMs); where bf16 GEMMs
    are emulated they are ~30x slower than that kernel. With AMX-BF16 that kernel runs its
    blocks as oneDNN AMX GEMMs and is the faster one (:func:`flash_attention`). Every other
    case is SDPA's fused kernel (float32 on CPU stays the exact path)."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and onednn_bf16():
        return flash_attention(q, k, v, offset) if amx_bf16() else gemm_attention(q, k, v, offset)
    if offset == 0:
        return sdpa(q, k, v, causal=True)
    n = q.shape[1]
    cols = torch.arange(offset + n, device=q.device)
    return sdpa(q, k, v, causal=False,
                mask=cols[None, :] <= torch.arange(n, device=q.device)[:, None] + offset)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int = 0
                    ) -> torch.Tensor:
    """bf16 causal attention by SDPA's CPU flash kernel on a CPU with AMX-BF16 (shapes as
    :func:`causal_attention`), the queries and keys padded with zero rows to
    :func:`padded_rows` counts.

    There the kernel computes its blocks as oneDNN AMX GEMMs: 2x :func:`gemm_attention` at
    16-4,096 tokens and half its error vs float64 (Xeon with AMX, 1-2 threads). It keeps a
    GEMM kernel for every block shape it meets, whose last block follows the length: fed
    random lengths it grew a process by ~550 MiB over 1,200 inputs. Padded, the shapes come
    from the short list the linear layers use. Padding is hidden from the real queries (a
    causal query sees no later key), and the padded length is the text's own; each sequence
    is its own call. A vector then does not depend on its batch, nor on the thread count
    (tested at 1-128 threads)."""
    lq = q.shape[1]
    lk = k.shape[1]  # offset + lq
    lqp, lkp = padded_rows(lq), padded_rows(lk)
    if (lqp, lkp) != (lq, lk):
        q, k, v = (_zero_padded(x, n) for x, n in ((q, lqp), (k, lkp), (v, lkp)))
    mask = None
    if offset:  # query i sees keys 0..offset + i; a padded query as many (no NaN rows)
        cols = torch.arange(lkp, device=q.device)
        mask = cols[None, :] <= torch.arange(lqp, device=q.device)[:, None] + offset
    # one sequence per call: the kernel picks its blocks' GEMM form from the batch size and
    # the thread count, and from 64 threads on a text's bits changed with its batch
    out = q.new_empty(q.shape[0], lq, *q.shape[2:])
    for i in range(q.shape[0]):
        one = (q[i : i + 1], k[i : i + 1], v[i : i + 1])
        out[i] = sdpa(*one, causal=mask is None, mask=mask)[0, :lq]
    return out


def _zero_padded(x: torch.Tensor, n: int) -> torch.Tensor:
    """x: [B, L, H, D] -> [B, n, H, D], zero rows after L."""
    out = x.new_zeros(x.shape[0], n, *x.shape[2:])
    out[:, : x.shape[1]] = x
    return out


@functools.lru_cache(maxsize=64)
def causal_bias(m: int, w: int, g: int, dtype: torch.dtype, device: torch.device
                ) -> torch.Tensor:
    """[m * g, w], contiguous: 0 where row (query i, head) may see column j <= i, else -inf.
    Added to the scores rather than masked_fill_'d (x + 0 == x, x + -inf == -inf, bit for bit,
    in ~1/3 of the time); a slice of a larger mask would be ~10x slower still (a broadcast add
    over a strided operand is not vectorised)."""
    above = torch.full((m, w), float("-inf"), dtype=dtype, device=device).triu(1)
    return above[:, None, :].expand(m, g, w).reshape(m * g, w)


def gemm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int = 0,
                   rows: int = 128, budget: int = 1 << 24) -> torch.Tensor:
    """Causal attention as two batched GEMMs per block of ``rows`` queries (shapes as
    :func:`causal_attention`): q scaled by 1/sqrt(D) as it is copied into the GEMM layout,
    the diagonal block masked, softmax accumulated in fp32 (bf16 in and out, as transformers'
    eager attention).

    The g = Hq / Hkv query heads that share a kv head are stacked as rows of one GEMM, so K/V
    are never repeated. The block size is chosen from one sequence's shape alone (``budget``
    elements of scores per sequence, 16 queries at the least), and sequences are taken a slice
    of the batch at a time under the same budget: a text's vector never depends on its batch,
    and the scores take ~32 MiB of bf16 (as much again for the probabilities) at any length up
    to 32K. 2-3x the flash kernel at 100-4,096 tokens (bf16, 2 threads, AVX512-BF16); error
    vs float64 1.4-1.9x the flash kernel's for unit-variance q/k, 4-9x for scores twice that
    wide (the scores rounded to bf16; the same before q took the scale in its copy).

    Every GEMM runs at a shape from a short list, as the linear layers do (oneDNN keeps a
    kernel per shape: see :func:`padded_rows`): blocks of a power-of-two count of queries
    (the last block of a sequence ends at its end, overlapping the one before), the keys a
    block sees padded with zero rows by :func:`padded_rows` (masked like later keys), the
    queries of a one-block sequence too, and slices of a power-of-two count of sequences.

    A block that sees more than :data:`KEY_TILE` keys reads them a tile at a time: two GEMM
    shapes per (slice, block) size whatever the length, where one per length made oneDNN keep
    a P @ V kernel with up to ~12 MiB of scratch memory for each (a server's RSS grew with
    every new long input). K and V are laid out tile by tile once per slice, so a block reads
    whole tiles in place and copies only its last, partial one (before, it copied its whole
    key prefix: O(L^2) bytes over a long sequence). The tiles' P @ V products are rounded to
    bf16 and summed in fp32; up to KEY_TILE keys a block is one GEMM each, as before.
    """
    b, hq, lk = q.shape[0], q.shape[2], k.shape[1]
    # queries per block, a power of two: per sequence, never per batch
    n = 1 << max(16, min(rows, budget // (hq * lk))).bit_length() - 1
    per = max(1, budget // (hq * n * lk))  # sequences per slice at most
    outs, b0 = [], 0
    while b0 < b:  # slices of 2^i sequences, the largest that fit
        step = 1 << min(per, b - b0).bit_length() - 1
        # one slice's temporaries (K/V rows, prefix buffers, scores) are freed before the next's
        outs.append(_attend_slice(q[b0 : b0 + step], k[b0 : b0 + step], v[b0 : b0 + step],
                                  offset, n))
        b0 += step
    return outs[0] if len(outs) == 1 else torch.cat(outs)


#: Keys one attention GEMM reads at most: a block that sees more reads them a tile at a time
#: (see :func:`gemm_attention`).
KEY_TILE = 2048


def _attend_slice(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, offset: int, n: int
                  ) -> torch.Tensor:
    """:func:`gemm_attention` over a slice of the batch, in blocks of ``n`` queries."""
    bs, lq, hq, d = qs.shape
    hkv, lk = ks.shape[2], ks.shape[1]
    g, nb = hq // hkv, bs * hkv
    # Every block has m queries: the last one ends at lq, overlapping the one before (its
    # rows are computed again and written over). One block pads its queries to mp rows.
    m = min(n, lq)
    mp, lkp = padded_rows(m), padded_rows(lk)
    lqp = lq - m + mp
    # rows (position, head) of each (sequence, kv head), scaled in the copy: [nb, Lqp * g, D]
    qh = qs.new_empty(nb, lqp * g, d)
    qh5 = qh.view(bs, hkv, lqp, g, d)
    torch.mul(qs.unflatten(2, (hkv, g)).transpose(1, 2), d**-0.5, out=qh5[:, :, :lq])
    qh5[:, :, lq:] = 0
    # K and V a tile of keys at a time, each tile contiguous: [tiles, nb, width, D], zero past
    # Lk (a padded key's score is masked, and 0 * its zero value row adds nothing)
    width = min(lkp, KEY_TILE)
    tiles = -(-lkp // width)
    kt, vt = qs.new_zeros(tiles, nb, width, d), qs.new_zeros(tiles, nb, width, d)
    for t in range(tiles):
        a, e = t * width, min(lk, (t + 1) * width)
        kt[t].view(bs, hkv, width, d)[:, :, : e - a] = ks[:, a:e].transpose(1, 2)
        vt[t].view(bs, hkv, width, d)[:, :, : e - a] = vs[:, a:e].transpose(1, 2)
    # Every GEMM operand is contiguous (K^T: transposed contiguous), in buffers of this slice:
    # oneDNN keys its kernels by strides as well as shapes, and a block of qh is strided by
    # the sequence's length (one kernel per length again), a slice of a tile by its width;
    # torch's oneDNN batched matmul would also copy such operands into a fresh tensor per
    # call (those fragmented the heap: +0.4-0.6 GiB peak RSS in 3 of 7 runs of one
    # 8,192-token input).
    qbuf, obuf = qh.new_empty(nb, mp * g, d), qh.new_empty(nb, mp * g, d)
    kbuf, vbuf = kt.new_empty(nb * width * d), vt.new_empty(nb * width * d)
    pbuf = qh.new_empty(nb * mp * g * width) if tiles > 1 else qh.new_empty(0)
    out = torch.empty_like(qh)

    def tile(x: torch.Tensor, buf: torch.Tensor, a: int, e: int) -> torch.Tensor:
        """Keys a..e of tiled K or V (within one tile): [nb, e - a, D], contiguous."""
        if e - a == width:
            return x[a // width]
        return buf[: nb * (e - a) * d].view(nb, e - a, d).copy_(x[a // width][:, : e - a])

    for s in [*range(0, lq - m, m), lq - m]:
        ke = offset + s + m  # keys the block's queries may see
        kp = padded_rows(ke)  # keys it reads: tiles, the last one partial
        spans = [(a, min(kp, a + width)) for a in range(0, kp, width)]
        block = slice(s * g, (s + mp) * g)
        qb = qbuf.copy_(qh[:, block])
        if len(spans) == 1:
            sc = torch.bmm(qb, tile(kt, kbuf, 0, kp).mT)  # [nb, mp * g, kp]
        else:
            sc = qs.new_empty(nb, mp * g, kp)
            for a, e in spans:
                sc[:, :, a:e] = torch.bmm(qb, tile(kt, kbuf, a, e).mT)
        # query i of the block sees keys up to ke - m + i (a padded query as many); the
        # diagonal block is masked by the bias, any columns after it wholly
        c, w = ke - m, min(mp, kp - ke + m)
        sc[:, :, c : c + w] += causal_bias(mp, w, g, qs.dtype, qs.device)
        sc[:, :, c + w :] = float("-inf")
        p = torch.softmax(sc, -1)
        if len(spans) == 1:
            out[:, block] = torch.bmm(p, tile(vt, vbuf, 0, kp), out=obuf)
            continue
        # tile by tile, the partial products summed in fp32 (each rounded to bf16 first)
        acc = torch.zeros(nb, mp * g, d, dtype=torch.float32, device=qs.device)
        for a, e in spans:
            pt = pbuf[: nb * mp * g * (e - a)].view(nb, mp * g, e - a).copy_(p[:, :, a:e])
            acc += torch.bmm(pt, tile(vt, vbuf, a, e), out=obuf)
        out[:, block] = acc
    return out.view(bs, hkv, lqp, g, d)[:, :, :lq].transpose(1, 2).reshape(bs, lq, hq, d)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """q: [B, Lq, heads, D], k/v: [B, Lk, kv heads, D] -> [B, Lq, heads, D]; GQA handled by
    SDPA (CPU: the flash kernel); ``mask``: [Lq, Lk] bool, True where a query may look."""
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        is_causal=causal, enable_gqa=q.shape[2] != k.shape[2],
    )
    return o.transpose(1, 2)


def rope_tables(inv_freq: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of positions 0..n-1 times ``inv_freq`` [D / 2]: [n, D / 2] float32 each,
    torch's own values (the reference's, to the bit), checked against float64.

    Why checked: torch's CPU cos/sin run MKL's VML, whose first call in a thread sometimes
    computes at its "enhanced performance" accuracy (about 11 bits; cos(1) = 0.5403335 against
    0.5403023) instead of the one torch asks for: one OpenMP thread's share of a pass's RoPE
    table came out so in about 1 of 10 fresh engine processes (2-vCPU Xeon with AMX, torch
    2.13 + MKL 2024.2), and its texts' vectors moved by 1e-4. A table off by more than 2 units
    in the last place anywhere is computed again; after three such, the float64 values
    rounded are used (within one unit of torch's)."""
    x = rope_angles(torch.arange(n), inv_freq)
    x64 = x.double().numpy()  # numpy's own cos/sin: no VML
    want = [torch.from_numpy(np.cos(x64)).float(), torch.from_numpy(np.sin(x64)).float()]
    for _ in range(3):
        got = [x.cos(), x.sin()]
        if all(_within_ulps(g, w, 2) for g, w in zip(got, want, strict=True)):
            return got[0], got[1]
    log.warning("RoPE: torch's cos/sin were off by more than 2 ulp three times; using the "
                "float64 values rounded")
    return want[0], want[1]


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """positions [T] times ``inv_freq`` [D / 2] -> [T, D / 2] float32, as the reference
    computes them."""
    return positions.float()[:, None] * inv_freq.float()[None, :]


def _within_ulps(got: torch.Tensor, want: torch.Tensor, ulps: int) -> bool:
    """Whether every value of float32 ``got`` is within ``ulps`` units in the last place of
    ``want``'s (want's spacing: the gap to the next float32 away from zero)."""
    up = torch.nextafter(want.abs(), torch.tensor(float("inf")))
    return bool(((got - want).abs() <= ulps * (up - want.abs())).all())


class Qwen3Encoder(nn.Module):
    """Qwen3 decoder stack used as an encoder: returns each sequence's last hidden state.
    Built with uninitialised weights (``torch.empty``): the loader fills them from a
    checkpoint (:func:`smysl.qwen3.loader.build_encoder`)."""

    def __init__(self, cfg: Qwen3Config) -> None:
        super().__init__()
        self.cfg = cfg
        # no random init: the weights come from the checkpoint, as Linear's do (nn.Embedding's
        # normal_ on the loader's meta device imports torch._dynamo, 1-3 s of every start);
        # the loader may put a QuantEmbedding of a GGUF's blocks here
        self.embed_tokens: nn.Module = nn.Embedding.from_pretrained(
            torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        #: The dtype activations enter the linear layers in (float32 for int8 layers); the
        #: embedding table may be stored narrower when that is lossless (a bf16 checkpoint).
        self.dtype = torch.float32
        #: The dtype q/k/v are kept and attended in, None for :attr:`dtype`. The int8 path on a
        #: CPU with native bf16 sets bfloat16: attention as bf16 GEMMs runs ~3x torch's fp32
        #: flash kernel there (see :func:`causal_attention`).
        self.attn_dtype: torch.dtype | None = None
        #: q/k norm and RoPE in the reference's operation order, rounding to the matmul dtype
        #: after each step as transformers does (float32: bit-identical q and k). The CPU
        #: engine clears it for every path but unquantised float32: :func:`norm_rope` is one
        #: float32 chain rounded once (fewer passes, and closer to float64). CUDA keeps it:
        #: small batches there are bound by kernel launches, and it needs fewer.
        self.exact_qk = True
        # on the CPU even when built on the meta device (the loader does): real values, and
        # meta arithmetic runs torch's reference decompositions, which import torch._dynamo
        d = cfg.head_dim
        arange = torch.arange(0, d, 2, dtype=torch.int64, device="cpu")
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", 1.0 / (cfg.rope_theta ** (arange.float() / d)),
                             persistent=False)
        #: CPU: cos and sin [P, D / 2] of positions 0..P-1 (:meth:`rope`), None until a pass.
        self._rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] -> cos, sin: [T, D] in float32 (the half-frequencies repeated). CPU:
        rows of :func:`rope_tables`, kept and grown with the longest position seen; CUDA:
        computed in the pass (no host sync: graphs capture it)."""
        if positions.device.type != "cpu":
            freqs = rope_angles(positions, self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos(), emb.sin()
        need = int(positions.max()) + 1 if positions.numel() else 1
        tables = self._rope_tables
        if tables is None or tables[0].shape[0] < need:
            have = 0 if tables is None else tables[0].shape[0]
            # doubling, so a stream of ever longer inputs builds O(log) tables; threads that
            # race here build equal ones
            n = max(need, min(2 * have, self.cfg.max_position_embeddings), 512)
            tables = self._rope_tables = rope_tables(self.inv_freq, n)
        c, s = tables[0][positions], tables[1][positions]  # [T, D / 2]
        return torch.cat((c, c), dim=-1), torch.cat((s, s), dim=-1)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, lengths: list[int], chunk: int = 4096,
                check: Callable[[], None] | None = None) -> torch.Tensor:
        """input_ids: [T] packed; lengths: B sequence lengths summing to T -> [B, H] float32.
        ``chunk``: tokens per slice of the per-token work (see :class:`DecoderLayer`);
        ``check``: see :meth:`run`. (The CUDA engine packs its own inputs and calls
        :meth:`run`: see ``smysl.qwen3.cuda``.)"""
        dev = input_ids.device
        # built on the host and moved once: per-sequence device ops would each be a launch
        positions = torch.cat([torch.arange(n) for n in lengths]).to(dev)
        ends = (torch.tensor(lengths).cumsum(0) - 1).to(dev)  # [B] index of each last token
        if dev.type == "cuda":
            from smysl.qwen3.cuda import VarlenPlan  # it imports this module

            plan: Plan = VarlenPlan.for_lengths(lengths, dev, self.dtype)
        else:
            plan = AttentionPlan(lengths, dev)
        return self.run(input_ids, positions, ends, plan, chunk, check)

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, ends: torch.Tensor,
            plan: Plan, chunk: int = 4096, check: Callable[[], None] | None = None
            ) -> torch.Tensor:
        """input_ids, positions: [T]; ends: [B] index of each sequence's last token in the
        stream -> [B, H] float32. No host work and no device sync: CUDA graphs capture this.
        ``check`` (CPU) is called after each layer and raises to stop the pass: a CPU pass
        takes seconds to minutes, and a closing engine must not wait for it (or leave a
        thread inside torch when the interpreter exits: that aborts the process)."""
        dt = self.dtype
        cos, sin = self.rope(positions)
        rt = dt if self.exact_qk else torch.float32
        rope = (cos.to(rt), sin.to(rt))  # cast once, not in every layer
        h = self.embed_tokens(input_ids).float()  # [T, H] residual stream, float32
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, plan, dt, last=ends if i == n - 1 else None, chunk=chunk,
                      attn_dt=self.attn_dtype, exact=self.exact_qk)
            if check is not None:
                check()
        return self.norm(h, torch.float32)  # [B, H]
