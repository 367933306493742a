"""The fused Triton kernels (smysl.qwen3.kernels) against the eager ops they replace.

Without CUDA they run in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``, set by
tests/conftest.py before anything imports Triton), in float16, where the interpreter rounds
as a GPU does. The kernels take the eager chain's rounding steps; only float32 sums may run
in another order, so an element may be one unit in the last place off, rarely. bfloat16 runs
on a GPU only (the interpreter rounds it wrongly)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F

# without CUDA, tests/conftest.py has set TRITON_INTERPRET=1 before anything imported Triton
pytest.importorskip("triton", reason="Triton is not installed")

from smysl.qwen3 import kernels
from smysl.qwen3.cuda import FUSED_MAX_ERROR
from smysl.qwen3.model import (
    Attention,
    AttentionPlan,
    Qwen3Config,
    Qwen3Encoder,
    RMSNorm,
)

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
#: The interpreter rounds bfloat16 wrongly: float16 only there.
DTYPES = [torch.float16, *([torch.bfloat16] if CUDA else [])]


def same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within one unit in the last place, and in fewer than 1% of the elements off at all
    (float32 sums in another order)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=2 * torch.finfo(got.dtype).eps, atol=1e-6)
    assert (got != want).float().mean() < 0.01


def config(heads: int, kv_heads: int, head_dim: int, hidden: int = 64, layers: int = 1
           ) -> Qwen3Config:
    return Qwen3Config(vocab_size=100, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, head_dim=head_dim)


def randomise(module: torch.nn.Module, scale: float = 1.0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=gen) * scale
    return module


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 1024])
def test_rms_norm_matches_the_reference_chain(hidden: int, dt: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(hidden)
    h = (torch.randn(37, hidden, generator=gen) * 4).to(DEV)
    norm = randomise(RMSNorm(hidden, 1e-6)).to(DEV, dt)
    want = norm(h, dt)
    same(kernels.add_rms_norm(h.clone(), norm.weight, 1e-6, dt), want)
    # a float32 weight is rounded to the matmul dtype first, as the reference does
    same(kernels.add_rms_norm(h.clone(), norm.weight.float(), 1e-6, dt), want)


@pytest.mark.parametrize("dt", DTYPES)
def test_add_rms_norm_updates_the_residual_stream(dt: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    h = (torch.randn(21, 96, generator=gen) * 4).to(DEV)
    delta = torch.randn(21, 96, generator=gen).to(DEV, dt)
    norm = randomise(RMSNorm(96, 1e-6)).to(DEV, dt)
    got_h = h.clone()
    got = kernels.add_rms_norm(got_h, norm.weight, 1e-6, dt, delta=delta)
    want_h = h + delta  # what DecoderLayer's in-place mixed-dtype add computes
    assert torch.equal(got_h, want_h)
    same(got, norm(want_h, dt))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"),
                         [(4, 2, 16), (8, 2, 16), (16, 8, 128), (6, 3, 24), (12, 4, 16)])
def test_qk_norm_rope_matches_project(heads: int, kv_heads: int, head_dim: int,
                                      dt: torch.dtype) -> None:
    """q/k norm and RoPE as Attention.project computes them: more heads than one program
    takes (16 + 8 + 8 = the 0.6B's), blocks of v heads only (whole, or the last one partly
    empty: 12 + 4 + 4), and a head size that is not a power of two."""
    cfg = config(heads, kv_heads, head_dim)
    attn = randomise(Attention(cfg)).to(DEV, dt)
    model = Qwen3Encoder(cfg).to(DEV)
    t = 23
    x = torch.randn(t, cfg.hidden_size, generator=torch.Generator().manual_seed(2)).to(DEV, dt)
    cos, sin = (c.to(dt) for c in model.rope(torch.arange(t, device=DEV) * 37))
    want = [torch.empty(t, n, head_dim, dtype=dt, device=DEV) for n in (heads, kv_heads, kv_heads)]
    attn.project(x, cos, sin, *want)
    got = [torch.full_like(w, float("nan")) for w in want]
    kernels.qk_norm_rope(attn.qkv_proj(x), attn.q_norm.weight, attn.k_norm.weight,
                         attn.q_norm.eps, cos, sin, *got)
    for g, w in zip(got, want, strict=True):
        same(g, w)


@pytest.mark.parametrize("dt", DTYPES)
def test_swiglu_matches_silu_times_up(dt: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    gate_up = (torch.randn(19, 2 * 1100, generator=gen) * 3).to(DEV, dt)  # 2 column blocks
    gate, up = gate_up.split(1100, dim=-1)
    want = F.silu(gate) * up
    got = kernels.swiglu(gate_up)
    # exp's last bits may differ from torch's: one unit in the last place
    torch.testing.assert_close(got, want, rtol=2 * torch.finfo(dt).eps, atol=1e-6)


def test_empty_inputs() -> None:
    h = torch.empty(0, 64, device=DEV)
    assert kernels.add_rms_norm(h, torch.ones(64, device=DEV), 1e-6, torch.float16).shape == (0, 64)
    assert kernels.swiglu(torch.empty(0, 256, dtype=torch.float16, device=DEV)).shape == (0, 128)


def _tiny(dt: torch.dtype, layers: int, lengths: Sequence[int] = (7, 33, 1)
          ) -> tuple[Qwen3Encoder, tuple[Any, ...]]:
    """A random model in ``dt`` and one batch's (ids, positions, ends, plan)."""
    cfg = config(4, 2, 16, layers=layers)
    model = randomise(Qwen3Encoder(cfg), 0.2).to(DEV, dt)
    assert isinstance(model, Qwen3Encoder)
    model.dtype = dt
    lengths = list(lengths)
    ids = torch.randint(0, cfg.vocab_size, (sum(lengths),),
                        generator=torch.Generator().manual_seed(4)).to(DEV)
    pos = torch.cat([torch.arange(n) for n in lengths]).to(DEV)
    ends = (torch.tensor(lengths).cumsum(0) - 1).to(DEV)
    if CUDA:
        from smysl.qwen3.cuda import VarlenPlan

        plan = VarlenPlan.for_lengths(lengths, DEV, dt)
    else:
        plan = AttentionPlan(lengths, DEV)  # type: ignore[assignment]
    return model, (ids, pos, ends, plan)


@pytest.mark.parametrize("dt", DTYPES)
def test_run_matches_the_eager_pass(dt: torch.dtype) -> None:
    """The whole forward pass on the fused kernels, per-token work in slices smaller than the
    batch: the same rows as Qwen3Encoder.run (attention through the CPU plan in the
    interpreter; the CUDA plan on a GPU)."""
    lengths = [5, 11, 1, 3]
    model, (ids, pos, ends, plan) = _tiny(dt, 3, lengths)
    want = model.run(ids, pos, ends, plan, chunk=8)
    got = kernels.run(model, ids, pos, ends, plan, chunk=8)
    assert got.shape == (len(lengths), model.cfg.hidden_size) and got.dtype == torch.float32
    assert F.cosine_similarity(got, want).min() > 0.9999


@pytest.mark.parametrize("dt", DTYPES)
def test_layer_error_of_correct_kernels_is_small(dt: torch.dtype) -> None:
    """Each layer's update on the kernels is the eager one's to float tolerance, however
    deep the model (the load-time check of smysl.qwen3.cuda.Runner)."""
    model, batch = _tiny(dt, 4)
    err = kernels.layer_error(model, *batch, chunk=16)
    assert err < (2e-3 if dt == torch.float16 else FUSED_MAX_ERROR / 2)


@pytest.mark.parametrize("part", ["swiglu", "qk_norm_rope", "norm scale", "last norm"])
def test_layer_error_finds_a_wrong_kernel(part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel wrong in a way a whole pass may hide (gate and up read the other way round;
    RoPE turned the wrong way; a norm's output 5% too large; the final norm's weight left
    out) fails the check. (float16
    in the interpreter, which runs the MLP unfused: the SwiGLU kernel is checked in
    bfloat16 on a GPU.)"""
    if part == "swiglu" and not CUDA:
        pytest.skip("float16 runs MLP.fp16, not the SwiGLU kernel; bfloat16 needs a GPU")
    model, batch = _tiny(torch.bfloat16 if part == "swiglu" else torch.float16, 3)
    if part == "swiglu":
        def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
            u, g = gate_up.float().chunk(2, dim=-1)
            return (F.silu(g) * u).to(gate_up.dtype)

        monkeypatch.setattr(kernels, "swiglu", swiglu)
    elif part == "qk_norm_rope":
        right = kernels.qk_norm_rope

        def rope(qkv, qw, kw, eps, cos, sin, q, k, v):  # type: ignore[no-untyped-def]
            right(qkv, qw, kw, eps, cos, -sin, q, k, v)

        monkeypatch.setattr(kernels, "qk_norm_rope", rope)
    elif part == "norm scale":
        right_add = kernels.add_rms_norm

        def scaled(h, weight, eps, dtype, delta=None):  # type: ignore[no-untyped-def]
            return right_add(h, weight, eps, dtype, delta) * 1.05

        monkeypatch.setattr(kernels, "add_rms_norm", scaled)
    else:
        model.norm.weight.data.normal_(generator=torch.Generator().manual_seed(1))
        right_norm = kernels.add_rms_norm

        def norm(h, weight, eps, dtype, delta=None):  # type: ignore[no-untyped-def]
            if weight is model.norm.weight:
                weight = torch.ones_like(weight)
            return right_norm(h, weight, eps, dtype, delta)

        monkeypatch.setattr(kernels, "add_rms_norm", norm)
    assert kernels.layer_error(model, *batch, chunk=16) > FUSED_MAX_ERROR


def test_layer_error_of_rows_not_finite_is_infinite(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch = _tiny(torch.float16, 2)
    right = kernels.qk_norm_rope

    def rope(qkv, qw, kw, eps, cos, sin, q, k, v):  # type: ignore[no-untyped-def]
        right(qkv, qw, kw, eps, cos, sin, q, k, v)
        q.fill_(float("nan"))

    monkeypatch.setattr(kernels, "qk_norm_rope", rope)
    assert kernels.layer_error(model, *batch, chunk=16) == float("inf")


def test_run_refuses_what_it_does_not_compute() -> None:
    model = Qwen3Encoder(config(4, 2, 16))  # float32: the exact path stays eager
    ids = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="bfloat16/float16"):
        kernels.run(model, ids, torch.arange(3), torch.tensor([2]), AttentionPlan([3], DEV))


#: Compiles each kernel for sm_90 at the real shapes; prints one line per kernel: its name and
#: whether its PTX has a contracted bf16/fp16 FMA. In a process of its own: in one where the
#: interpreter ran, Triton's compiler sees the interpreter's language objects.
COMPILE = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from smysl.qwen3 import kernels as K
dt = "*" + sys.argv[1]
def ptx(fn, sig, const, warps):
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(sig.values()) if t[0] == "*"}
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, **K.OPTIONS}).asm["ptx"]
def report(name, code):
    assert "st.global" in code, name
    print(name, "fma.rn" in code.replace("fma.rn.f32", ""))
for h, ffn in ((1024, 3072), (2560, 9728), (4096, 12288)):
    for add in (False, True):
        report(f"rms_norm {h} add={add}", ptx(K._add_rms_norm_kernel, {
            "h_ptr": "*fp32", "d_ptr": dt if add else "*fp32", "w_ptr": dt, "out_ptr": dt,
            "eps": "fp32", "H": "constexpr", "BLOCK": "constexpr", "ADD": "constexpr"},
            {"H": h, "BLOCK": triton.next_power_of_2(h), "ADD": add}, 8))
    report(f"swiglu {ffn}", ptx(K._swiglu_kernel, {
        "gu_ptr": dt, "out_ptr": dt, "N": "constexpr", "BLOCK": "constexpr"},
        {"N": ffn, "BLOCK": K.SWIGLU_BLOCK}, 4))
names = ("qkv_ptr", "qw_ptr", "kw_ptr", "cos_ptr", "sin_ptr", "q_ptr", "k_ptr", "v_ptr")
for hq, hkv in ((16, 8), (32, 8)):
    report(f"qk_norm_rope {hq}/{hkv}", ptx(K._qk_norm_rope_kernel, {
        **dict.fromkeys(names, dt), "eps": "fp32", "HQ": "constexpr", "HKV": "constexpr",
        "D": "constexpr", "DP": "constexpr", "NH": "constexpr"},
        {"HQ": hq, "HKV": hkv, "D": 128, "DP": 128, "NH": K.HEADS}, 2))
"""


@pytest.mark.parametrize("dt", ["bf16", "fp16"])
def test_kernels_compile_for_a_hopper_gpu_without_fma_contraction(dt: str) -> None:
    """The interpreter never compiles: this builds each kernel for sm_90 (H100/H200) at the
    0.6B's, 4B's and 8B's shapes with the launches' options, no GPU needed, and reads the
    PTX: RoPE's ``x * cos + rot * sin`` must stay a rounded multiply and a rounded add (an FMA
    would skip the reference's rounding of ``rot * sin``), and so must the rest."""
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia", reason="Triton without its CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", COMPILE, dt], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split("\n")
    compiled = dict(line.rsplit(" ", 1) for line in lines if line.strip())
    assert len(compiled) == 11
    assert set(compiled.values()) == {"False"}, compiled


def test_fp16_run_stays_finite_where_the_reference_chain_overflows() -> None:
    """float16 on the fused path takes MLP.fp16 (rows scaled where the SwiGLU output passes
    float16's range): a token whose first MLP makes ~9e4 gives finite rows, as eager."""
    model, (ids, pos, ends, plan) = _tiny(torch.float16, 2)
    inter = model.cfg.intermediate_size
    for lay in model.layers:
        lay.post_attention_layernorm.weight.data.fill_(1.0)
    model.layers[0].self_attn.o_proj.weight.data.zero_()
    model.embed_tokens.weight.data[int(ids[0])] = 1.0
    gate_up = model.layers[0].mlp.gate_up_proj.weight.data
    gate_up[3] = gate_up[inter + 3] = 300 / model.cfg.hidden_size
    want = model.run(ids, pos, ends, plan, chunk=16)
    got = kernels.run(model, ids, pos, ends, plan, chunk=16)
    assert torch.isfinite(got).all() and torch.isfinite(want).all()
    assert F.cosine_similarity(got, want).min() > 0.9999
    assert kernels.layer_error(model, ids, pos, ends, plan, chunk=16) < FUSED_MAX_ERROR
