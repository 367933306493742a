"""Fused Triton kernels for the CUDA forward pass in bfloat16/float16 (issue 12).

On the GPU the 0.6B's pass was bound by small elementwise kernels, not by its matmuls: a warm
profile on an H200 spent 82 ms in float32 casts and residual adds, 51 ms in RMSNorm and 21 ms
in RoPE's ``cat`` against 34 ms of attention (docs/benchmarks.md). Each eager op reads and
writes a whole ``[T, H]`` tensor and is one launch. Three kernels replace them, each one pass
over memory, each keeping the reference's rounding steps (every op of transformers' eager
chain rounds to the matmul dtype; so do these, in the same order, only without the round
trips through memory):

* :func:`add_rms_norm`: ``h += delta`` (float32 residual stream) and ``w * RMSNorm(h)``;
* :func:`qk_norm_rope`: the qkv projection's output split into q, k, v; q_norm/k_norm per
  head and RoPE on q and k;
* :func:`swiglu`: ``silu(gate) * up`` from the fused gate|up projection.

Every launch passes ``enable_fp_fusion=False`` (:data:`OPTIONS`): Triton otherwise contracts
a product and a sum into one FMA (RoPE's ``x * cos + rot * sin``), skipping a rounding step
of the reference's (a one-ulp difference in ~23% of q/k elements); the interpreter never
contracts, so only a GPU would show it (the tests read the PTX compiled for an H100/H200).

:func:`run` is :meth:`Qwen3Encoder.run` with them, the MLP's output added to the residual
stream by the next norm's kernel: 9 launches a layer (4 of them matmuls, 1 attention) instead
of ~35.
The CUDA runner checks it against the eager pass at load, layer by layer
(:func:`layer_error`), and stays eager when Triton is missing or disagrees
(:class:`smysl.qwen3.cuda.Runner`). Triton runs these on the CPU too,
with ``TRITON_INTERPRET=1`` (float16 and float32 only: its interpreter rounds bfloat16
wrongly): the tests do.
"""

from __future__ import annotations

from typing import cast

import torch
import triton
import triton.language as tl

from smysl.qwen3.model import DecoderLayer, Plan, Qwen3Encoder

#: Attention heads per program of :func:`qk_norm_rope` (a [HEADS, D] tile).
HEADS = 8
#: Columns per program of :func:`swiglu`.
SWIGLU_BLOCK = 1024
#: Compile options of every launch: no FMA contraction (see above).
OPTIONS = {"enable_fp_fusion": False}


@triton.jit
def _add_rms_norm_kernel(h_ptr, d_ptr, w_ptr, out_ptr, eps, H: tl.constexpr,
                         BLOCK: tl.constexpr, ADD: tl.constexpr):
    # one program per row: h [T, H] float32, d [T, H] any float (ADD), out [T, H]
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < H
    x = tl.load(h_ptr + row * H + cols, mask=m, other=0.0).to(tl.float32)
    if ADD:
        x += tl.load(d_ptr + row * H + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(h_ptr + row * H + cols, x, mask=m)
    r = tl.math.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    dt = out_ptr.dtype.element_ty
    # the reference: normalise in float32, round, scale by the weight in the matmul dtype
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(dt).to(tl.float32)
    y = (x * r).to(dt).to(tl.float32)
    tl.store(out_ptr + row * H + cols, (w * y).to(dt), mask=m)


def add_rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype,
                 delta: torch.Tensor | None = None) -> torch.Tensor:
    """h: [T, H] float32, contiguous (``h += delta`` in place first, if given: [T, H], any
    float dtype) -> ``weight * RMSNorm(h)`` [T, H] in ``dtype``, rounded as the reference."""
    t, n = h.shape
    if not h.is_contiguous():
        raise ValueError("add_rms_norm updates h in place: it must be contiguous")
    out = torch.empty((t, n), dtype=dtype, device=h.device)
    if delta is not None:
        delta = delta.contiguous()
    if t:
        block = triton.next_power_of_2(n)
        _add_rms_norm_kernel[(t,)](h, h if delta is None else delta, weight, out, eps, n, block,
                                   delta is not None, num_warps=4 if block <= 1024 else 8,
                                   **OPTIONS)
    return out


@triton.jit
def _qk_norm_rope_kernel(qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, eps,
                         HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                         DP: tl.constexpr, NH: tl.constexpr):
    # program (token t, block of NH heads of the qkv row [HQ | HKV | HKV heads of D])
    t = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1) * NH + tl.arange(0, NH)[:, None]  # [NH, 1]
    d = tl.arange(0, DP)[None, :]  # [1, DP]
    half = D // 2
    valid = (head < HQ + 2 * HKV) & (d < D)
    rot = (d + half) % D  # the partner column of rotate_half
    row = qkv_ptr + t * ((HQ + 2 * HKV) * D) + head * D
    raw = tl.load(row + d, mask=valid, other=0.0)
    dt = q_ptr.dtype.element_ty
    is_v = head >= HQ + HKV
    v_out = v_ptr + t * (HKV * D) + (head - HQ - HKV) * D + d
    if tl.program_id(1) * NH >= HQ + HKV:  # v heads only (the real shapes' last blocks): copy
        tl.store(v_out, raw.to(dt), mask=valid & is_v)
    else:
        x = raw.to(tl.float32)
        xr = tl.load(row + rot, mask=valid, other=0.0).to(tl.float32)
        r = tl.math.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None]  # [NH, 1] per head
        is_q = head < HQ
        w = tl.where(is_q, tl.load(qw_ptr + d, mask=d < D, other=0.0),
                     tl.load(kw_ptr + d, mask=d < D, other=0.0)).to(dt).to(tl.float32)
        wr = tl.where(is_q, tl.load(qw_ptr + rot, mask=d < D, other=0.0),
                      tl.load(kw_ptr + rot, mask=d < D, other=0.0)).to(dt).to(tl.float32)
        # RMSNorm as the reference rounds it (see _add_rms_norm_kernel), then
        # RoPE: x * cos + cat(-x2, x1) * sin, each product and the sum rounded
        y = (w * (x * r).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        yr = (wr * (xr * r).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        yr = tl.where(d < half, -yr, yr)
        c = tl.load(cos_ptr + t * D + d, mask=d < D, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + t * D + d, mask=d < D, other=0.0).to(tl.float32)
        o = ((y * c).to(dt).to(tl.float32) + (yr * s).to(dt).to(tl.float32)).to(dt)
        tl.store(q_ptr + t * (HQ * D) + head * D + d, o, mask=valid & is_q)
        is_k = (head >= HQ) & (head < HQ + HKV)
        tl.store(k_ptr + t * (HKV * D) + (head - HQ) * D + d, o, mask=valid & is_k)
        tl.store(v_out, raw.to(dt), mask=valid & is_v)  # a block of k and v heads


def qk_norm_rope(qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 eps: float, cos: torch.Tensor, sin: torch.Tensor, q: torch.Tensor,
                 k: torch.Tensor, v: torch.Tensor) -> None:
    """qkv: [t, (Hq + 2 Hkv) D] contiguous -> q [t, Hq, D], k and v [t, Hkv, D] (contiguous,
    written): q and k normed per head (weights [D]) and rotated (cos/sin [t, D], in q's
    dtype, as :func:`smysl.qwen3.model.apply_rope` takes them), v copied."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    if t:
        grid = (t, triton.cdiv(hq + 2 * hkv, HEADS))
        _qk_norm_rope_kernel[grid](qkv.contiguous(), q_weight, k_weight, cos, sin, q, k, v,
                                   eps, hq, hkv, d, triton.next_power_of_2(d), HEADS,
                                   num_warps=2, **OPTIONS)


@triton.jit
def _swiglu_kernel(gu_ptr, out_ptr, N: tl.constexpr, BLOCK: tl.constexpr):
    # program (token t, block of columns): gu [T, 2N] (gate | up) -> out [T, N]
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < N
    g = tl.load(gu_ptr + t * (2 * N) + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + t * (2 * N) + N + cols, mask=m, other=0.0).to(tl.float32)
    dt = out_ptr.dtype.element_ty
    s = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)  # silu, rounded as F.silu's output
    tl.store(out_ptr + t * N + cols, (s * u).to(dt), mask=m)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [t, 2I] contiguous -> ``silu(gate) * up`` [t, I] in its dtype."""
    gate_up = gate_up.contiguous()
    t, i = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty(t, i)
    if t:
        _swiglu_kernel[(t, triton.cdiv(i, SWIGLU_BLOCK))](gate_up, out, i, SWIGLU_BLOCK,
                                                          num_warps=4, **OPTIONS)
    return out


# ---------------------------------------------------------------------------- the forward pass
def layer(lay: DecoderLayer, h: torch.Tensor, pending: list[torch.Tensor], cos: torch.Tensor,
          sin: torch.Tensor, plan: Plan, dt: torch.dtype, last: torch.Tensor | None, chunk: int
          ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:meth:`DecoderLayer.forward` on the fused kernels (its exact path, q/k/v in ``dt``).

    h: [T, H] float32, updated in place; cos/sin: [T, D] in ``dt``. The MLP's output is not
    added to h here but by the next norm's kernel, in the same pass over h: ``pending`` is
    the previous layer's, one [chunk, H] tensor per chunk of h, in ``dt`` (float32 for
    float16; empty for the first layer); returns (h, this layer's pending). In float16 the
    MLP is :meth:`smysl.qwen3.model.MLP.fp16` (rows scaled where float16 would overflow),
    not the SwiGLU kernel.
    """
    a, t = lay.self_attn, h.shape[0]
    eps = lay.input_layernorm.eps
    q = h.new_empty(t, a.hq, a.d, dtype=dt)
    k = h.new_empty(t, a.hkv, a.d, dtype=dt)
    v = h.new_empty(t, a.hkv, a.d, dtype=dt)
    for i, s in enumerate(range(0, t, chunk)):  # per-token work in slices: see DecoderLayer
        e = s + chunk
        x = add_rms_norm(h[s:e], lay.input_layernorm.weight, eps, dt,
                         delta=pending[i] if pending else None)
        qk_norm_rope(a.qkv_proj(x), a.q_norm.weight, a.k_norm.weight, a.q_norm.eps, cos[s:e],
                     sin[s:e], q[s:e], k[s:e], v[s:e])
    del pending
    out = plan.attend(q, k, v) if last is None else plan.attend_last(q[last], k, v)
    del q, k, v
    if last is not None:
        h = h[last]
    mlp = lay.mlp
    mlp_out = []
    for s in range(0, h.shape[0], chunk):
        x = add_rms_norm(h[s : s + chunk], lay.post_attention_layernorm.weight, eps, dt,
                         delta=a.o_proj(out[s : s + chunk].flatten(1)))
        # float16: the MLP's own pass (rows scaled where float16 would overflow, MLP.fp16)
        mlp_out.append(mlp(x) if dt == torch.float16
                       else mlp.down_proj(swiglu(mlp.gate_up_proj(x))))
    return h, mlp_out


def _fused_dtype(model: Qwen3Encoder) -> torch.dtype:
    """The model's matmul dtype, if these kernels compute it (bfloat16/float16, the
    reference's operation order); else ``ValueError``."""
    dt = model.dtype
    if dt not in (torch.bfloat16, torch.float16) or not model.exact_qk or model.attn_dtype:
        raise ValueError(f"fused kernels run bfloat16/float16 exact models, not {dt}")
    return dt


@torch.inference_mode()
def run(model: Qwen3Encoder, input_ids: torch.Tensor, positions: torch.Tensor,
        ends: torch.Tensor, plan: Plan, chunk: int = 4096) -> torch.Tensor:
    """:meth:`Qwen3Encoder.run` on the fused kernels -> [B, H] float32. For bfloat16/float16
    models on the reference's operation order (``exact_qk``, q/k/v in the matmul dtype)."""
    dt = _fused_dtype(model)
    cos, sin = (x.to(dt) for x in model.rope(positions))
    h = model.embed_tokens(input_ids).float()  # [T, H] residual stream, float32
    pending: list[torch.Tensor] = []
    layers = cast(list[DecoderLayer], list(model.layers))
    for i, lay in enumerate(layers):
        h, pending = layer(lay, h, pending, cos, sin, plan, dt,
                           ends if i == len(layers) - 1 else None, chunk)
    # the last MLP's output added and the final norm applied, in float32: [B, H]
    norm = model.norm
    rows = [add_rms_norm(h[s : s + chunk], norm.weight, norm.eps, torch.float32, delta=p)
            for s, p in zip(range(0, h.shape[0], chunk), pending, strict=True)]
    return rows[0] if len(rows) == 1 else torch.cat(rows)


@torch.inference_mode()
def layer_error(model: Qwen3Encoder, input_ids: torch.Tensor, positions: torch.Tensor,
                ends: torch.Tensor, plan: Plan, chunk: int = 4096) -> float:
    """The largest per-row relative difference ``|fused - eager| / |eager|`` between what each
    layer adds to the residual stream on these kernels and on the eager ops, every layer given
    the same input (the eager pass's), and between the final norm's rows: a check of the
    kernels whose bound does not depend on the depth, and that sees a wrong scale as well as
    a wrong direction. Two whole bfloat16 passes drift apart layer by layer on random weights
    (fused against eager: cosine 0.99998 over the 0.6B's 28 layers, 0.99979 over the 8B's 36
    on an H200), while one layer of either differs only in float32 summation order and
    ``exp``'s last bits. A non-finite row is an infinite difference. Arguments as
    :func:`run`'s. (The hand-over of a layer's MLP output to the next norm is the whole
    pass's to check.)"""
    dt = _fused_dtype(model)
    cos, sin = (x.to(dt) for x in model.rope(positions))
    h = model.embed_tokens(input_ids).float()  # [T, H]
    layers = cast(list[DecoderLayer], list(model.layers))
    worst = 0.0
    for i, lay in enumerate(layers):
        last = ends if i == len(layers) - 1 else None
        base = h if last is None else h[last]
        want = lay(h.clone(), (cos, sin), plan, dt, last=last, chunk=chunk)
        got, pending = layer(lay, h.clone(), [], cos, sin, plan, dt, last, chunk)
        got = got + torch.cat(pending)
        worst = max(worst, _largest_error(got - base, want - base))
        h = want
    want = model.norm(h, torch.float32)
    got = add_rms_norm(h.clone(), model.norm.weight, model.norm.eps, torch.float32)
    return max(worst, _largest_error(got, want))


def _largest_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """[N, H] float32 each -> the largest row ``|got - want| / |want|`` (0 for rows both
    zero, inf for one zero against one not, or for a row that is not finite)."""
    diff = (got - want).norm(dim=1)
    scale = want.norm(dim=1)
    err = torch.where(scale > 0, diff / scale, torch.where(diff > 0, torch.inf, 0.0))
    err = torch.nan_to_num(err, nan=torch.inf)
    return float(err.max()) if err.numel() else 0.0
