"""Model building blocks against straightforward reference computations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smysl.qwen3.cpu import amx_bf16, onednn_bf16
from smysl.qwen3.model import (
    MLP,
    AttentionPlan,
    Qwen3Config,
    Qwen3Encoder,
    RMSNorm,
    apply_rope,
    causal_attention,
    flash_attention,
    gemm_attention,
    norm_rope,
    pad_rows,
    padded_rows,
    rope_tables,
    sdpa,
)


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Per-sequence causal attention with an explicit L x L mask. q: [T, Hq, D]."""
    out, s = [], 0
    rep = q.shape[1] // k.shape[1]
    for n in lengths:
        qs, ks, vs = q[s : s + n], k[s : s + n], v[s : s + n]
        ks, vs = ks.repeat_interleave(rep, 1), vs.repeat_interleave(rep, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / qs.shape[-1] ** 0.5
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        p = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        out.append(torch.einsum("hqk,khd->qhd", p, vs))
        s += n
    return torch.cat(out)


@pytest.mark.parametrize("lengths", [[5], [3, 3, 3], [1, 7, 2, 7, 30], [64, 1, 1]])
def test_varlen_attention_matches_naive(lengths: list[int]) -> None:
    torch.manual_seed(0)
    t = sum(lengths)
    q, k, v = torch.randn(t, 4, 8), torch.randn(t, 2, 8), torch.randn(t, 2, 8)
    plan = AttentionPlan(lengths, torch.device("cpu"))
    assert torch.allclose(plan.attend(q, k, v), _naive(q, k, v, lengths), atol=1e-5)
    ends = torch.tensor(lengths).cumsum(0) - 1
    last = plan.attend_last(q[ends], k, v)
    assert torch.allclose(last, _naive(q, k, v, lengths)[ends], atol=1e-5)


def _prefixed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int) -> torch.Tensor:
    """float64 reference: q [B, Lq, Hq, D] over k/v [B, offset + Lq, Hkv, D], query i sees
    keys 0..offset + i."""
    rep = q.shape[2] // k.shape[2]
    q, k, v = q.double(), k.double().repeat_interleave(rep, 2), v.double().repeat_interleave(rep, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    lq, lk = q.shape[1], k.shape[1]
    mask = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + offset
    p = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize(("b", "lq", "offset", "rows"),
                         [(1, 1, 0, 128), (3, 37, 0, 16), (2, 130, 0, 128), (2, 20, 9, 16),
                          (1, 300, 0, 128), (2, 20, 9, 128), (1, 5, 40, 128), (3, 200, 0, 128),
                          (2, 33, 0, 32), (1, 1, 7, 128)])
def test_gemm_attention_matches_reference(b: int, lq: int, offset: int, rows: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(b, lq, 4, 32, dtype=torch.bfloat16)
    k, v = (torch.randn(b, offset + lq, 2, 32, dtype=torch.bfloat16) for _ in range(2))
    ref = _prefixed(q, k, v, offset)
    # blocks of `rows` queries, the last one partial, and a budget that forces 16-query blocks
    for out in (gemm_attention(q, k, v, offset, rows=rows),
                gemm_attention(q, k, v, offset, budget=1)):
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        # bf16 inputs, scores and probabilities: error of the order of bf16's step
        assert (out.double() - ref).abs().max() < 3e-2
        assert F.cosine_similarity(out.double().flatten(2), ref.flatten(2), dim=-1).min() > 0.999


@pytest.mark.parametrize(("b", "lq", "offset"), [(1, 300, 0), (3, 70, 0), (2, 40, 50)])
def test_key_prefix_slices_are_batch_invariant(b: int, lq: int, offset: int) -> None:
    """Many blocks per sequence, each reading a column slice of K^T (a prefix): the same bits
    alone as in a batch, and close to the reference."""
    torch.manual_seed(2)
    q = torch.randn(b, lq, 4, 32, dtype=torch.bfloat16)
    k, v = (torch.randn(b, offset + lq, 2, 32, dtype=torch.bfloat16) for _ in range(2))
    batched = gemm_attention(q, k, v, offset, rows=16)
    assert torch.equal(gemm_attention(q[-1:], k[-1:], v[-1:], offset, rows=16), batched[-1:])
    assert (batched.double() - _prefixed(q, k, v, offset)).abs().max() < 3e-2


def test_long_sequences_are_batch_invariant_at_the_real_head_size() -> None:
    """0.6B heads (16 / 8 of 128), 1,040 keys: nine blocks whose key/value prefixes are copied
    into buffers, batched over 1 or 2 sequences: the same bits."""
    torch.manual_seed(4)
    q = torch.randn(2, 1040, 16, 128, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 1040, 8, 128, dtype=torch.bfloat16) for _ in range(2))
    with torch.inference_mode():
        both = gemm_attention(q, k, v)
        assert torch.equal(gemm_attention(q[1:], k[1:], v[1:]), both[1:])


@pytest.mark.parametrize("budget", [1 << 24, 6400, 1])
def test_gemm_attention_does_not_depend_on_the_batch(budget: int) -> None:
    """Bit for bit, alone or in a batch, also when the score budget makes the blocks small
    (6,400: 32-query blocks, one sequence per slice; 1: 16-query blocks)."""
    torch.manual_seed(1)
    q = torch.randn(5, 50, 4, 32, dtype=torch.bfloat16)
    k, v = (torch.randn(5, 50, 2, 32, dtype=torch.bfloat16) for _ in range(2))
    together = gemm_attention(q, k, v, budget=budget)
    for i in (0, 3):
        assert torch.equal(gemm_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1],
                                          budget=budget), together[i : i + 1])
    assert torch.equal(gemm_attention(q[1:4], k[1:4], v[1:4], budget=budget), together[1:4])


def test_gemm_attention_meets_few_gemm_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN keeps a kernel (with a buffer up to ~12 MiB for a long sequence's P @ V) for every
    GEMM shape and operand strides it meets, for the life of the process: attention at every
    7th length from 1 to 1,100, 1-7 sequences at a time, meets a short list of them (184;
    2,216 before: some per length and block, a block of queries strided by its sequence's
    length among them), and its results stay close to the reference."""
    shapes: set[tuple[object, ...]] = set()
    bmm = torch.bmm

    def counted(a: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
        out = kw.get("out")
        shapes.add((a.shape, b.shape, a.stride(), b.stride(),
                    None if out is None else out.stride()))
        return bmm(a, b, **kw)

    monkeypatch.setattr(torch, "bmm", counted)
    torch.manual_seed(3)
    worst = 0.0
    for lq in range(1, 1101, 7):
        b = 1 + lq % 7
        q = torch.randn(b, lq, 4, 16, dtype=torch.bfloat16)
        k, v = (torch.randn(b, lq, 2, 16, dtype=torch.bfloat16) for _ in range(2))
        out = gemm_attention(q, k, v, budget=1 << 18)  # 64-query blocks past 512 keys
        if lq % 11 == 0:
            worst = max(worst, (out.double() - _prefixed(q, k, v, 0)).abs().max().item())
    assert worst < 3e-2
    assert len(shapes) < 200, len(shapes)


def test_causal_attention_dispatch() -> None:
    """float32 stays on SDPA's fused kernel (the exact path: bit-identical); bf16 on CPU runs
    as GEMMs; a prefix offset in float32 is SDPA with the equivalent mask."""
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 9, 4, 16), torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
    assert torch.equal(causal_attention(q, k, v), sdpa(q, k, v, causal=True))
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    if onednn_bf16():
        want = flash_attention if amx_bf16() else gemm_attention
        assert torch.equal(causal_attention(qb, kb, vb), want(qb, kb, vb))
    kp, vp = torch.randn(2, 14, 2, 16), torch.randn(2, 14, 2, 16)
    assert torch.allclose(causal_attention(q, kp, vp, offset=5).double(),
                          _prefixed(q, kp, vp, 5), atol=1e-5)


@pytest.mark.parametrize("amx", [True, False])
def test_bf16_attention_follows_amx(amx: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With AMX-BF16 bf16 attention is the flash kernel on padded rows, else the GEMM form
    (where oneDNN computes bf16 natively)."""
    monkeypatch.setattr("smysl.qwen3.model.onednn_bf16", lambda: True)
    monkeypatch.setattr("smysl.qwen3.model.amx_bf16", lambda: amx)
    torch.manual_seed(3)
    q = torch.randn(2, 21, 4, 16, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 21, 2, 16, dtype=torch.bfloat16) for _ in range(2))
    want = flash_attention if amx else gemm_attention
    assert torch.equal(causal_attention(q, k, v), want(q, k, v))


@pytest.mark.parametrize(("b", "lq", "offset"),
                         [(1, 1, 0), (3, 37, 0), (2, 130, 0), (2, 20, 9), (1, 300, 0),
                          (1, 5, 40), (2, 16, 0), (1, 1, 7), (2, 700, 0), (1, 66, 190)])
def test_flash_attention_matches_reference(b: int, lq: int, offset: int) -> None:
    """Padded to a short list of sizes, queries and keys alike, the results are the
    reference's to bf16 rounding: the padding stays hidden, with or without a prefix."""
    torch.manual_seed(lq + offset)
    q = torch.randn(b, lq, 4, 16, dtype=torch.bfloat16)
    k, v = (torch.randn(b, offset + lq, 2, 16, dtype=torch.bfloat16) for _ in range(2))
    out = flash_attention(q, k, v, offset)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert (out.double() - _prefixed(q, k, v, offset)).abs().max().item() < 2e-2


def test_flash_attention_does_not_depend_on_batch_or_threads() -> None:
    """A text's attention is the same bits alone, in any batch of its length, at any thread
    count: the kernel's block and packing choices read the batch size and the threads (a
    review found batches of 4-32 at 64-128 threads giving other bits, 0.6B head shapes, while
    one sequence per call gave the same at every count)."""
    torch.manual_seed(4)
    threads = torch.get_num_threads()
    try:
        for lq, offset, d in ((20, 0, 32), (64, 0, 32), (200, 0, 32), (33, 12, 32),
                              (80, 0, 128), (144, 0, 128)):
            q = torch.randn(8, lq, 16, d, dtype=torch.bfloat16)
            k, v = (torch.randn(8, offset + lq, 8, d, dtype=torch.bfloat16) for _ in range(2))
            torch.set_num_threads(1)
            alone = flash_attention(q[:1], k[:1], v[:1], offset)
            counts = ((1, 3), (2, 8), (4, 5)) + (((64, 4), (128, 8)) if d == 128 else ())
            for n, b in counts:
                torch.set_num_threads(n)
                assert torch.equal(flash_attention(q[:b], k[:b], v[:b], offset)[:1], alone), (
                    lq, n, b)
    finally:
        torch.set_num_threads(threads)


def test_flash_attention_meets_few_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flash kernel keeps a oneDNN GEMM kernel per block shape, and its last block follows
    the length (random lengths grew a process by ~550 MiB): it sees padded sizes only."""
    seen: set[tuple[int, int]] = set()
    real = sdpa

    def counted(q: torch.Tensor, k: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        seen.add((q.shape[1], k.shape[1]))
        return real(q, k, *a, **kw)

    monkeypatch.setattr("smysl.qwen3.model.sdpa", counted)
    for lq in range(1, 1101, 7):
        q = torch.zeros(1, lq, 4, 16, dtype=torch.bfloat16)
        k = torch.zeros(1, lq, 2, 16, dtype=torch.bfloat16)
        flash_attention(q, k, k)
    assert all(n == padded_rows(n) and m == padded_rows(m) for n, m in seen)
    assert len(seen) < 80, len(seen)


def test_emulated_bf16_keeps_the_flash_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where oneDNN would emulate bf16 (an AVX2 CPU), bf16 attention stays on SDPA: the GEMM
    form is ~30x slower there."""
    monkeypatch.setattr("smysl.qwen3.model.onednn_bf16", lambda: False)
    torch.manual_seed(3)
    q = torch.randn(1, 9, 4, 16, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 9, 2, 16, dtype=torch.bfloat16) for _ in range(2))
    assert torch.equal(causal_attention(q, k, v), sdpa(q, k, v, causal=True))


def test_cpu_grouping_is_by_equal_length() -> None:
    exact = AttentionPlan([10, 9, 10, 2], torch.device("cpu"))
    assert sorted(sorted(g[0]) for g in exact.groups) == [[0, 2], [1], [3]]
    assert exact.groups[0][2] is not None  # lengths 10 at 0 and 2: gathered, not contiguous
    run = AttentionPlan([4, 4, 4], torch.device("cpu"))
    assert len(run.groups) == 1 and run.groups[0][2] is None  # one contiguous run: a view


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_rope_is_the_reference_chain_rounded_once(dtype: torch.dtype) -> None:
    """norm_rope == apply_rope(RMSNorm(x)) in float64 maths; in bf16 it is closer to float64
    than the reference chain (one rounding instead of one per step); it reads a strided view
    of the qkv output and writes the attention buffer in place."""
    torch.manual_seed(0)
    t, heads, d = 40, 3, 16
    qkv = (torch.randn(t, 2 * heads * d) * 3).to(dtype)
    x = qkv[:, heads * d :].view(t, heads, d)  # not contiguous
    norm = RMSNorm(d, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(d) + 0.5)
    inv = 1.0 / (1e6 ** (torch.arange(0, d, 2).float() / d))
    emb = torch.arange(t).float()[:, None] * inv
    cos, sin = torch.cat([emb, emb], -1).cos(), torch.cat([emb, emb], -1).sin()
    x64 = x.double()
    ref = apply_rope(x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
                     * norm.weight.double(), cos.double(), sin.double())
    out = torch.full((t, heads, d), float("nan"), dtype=dtype)
    with torch.inference_mode():  # as the engine runs
        norm_rope(x, norm.weight, norm.eps, cos, sin, out)
        chain = apply_rope(norm(x), cos.to(dtype), sin.to(dtype)).double()
    err = (out.double() - ref).abs().max().item()
    if dtype == torch.float32:
        assert err < 1e-5
    else:
        assert err < 0.02 and err < (chain - ref).abs().max().item()


def test_rope_matches_rotate_half_reference() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 2, 8)
    pos = torch.arange(6).float()
    inv = 1.0 / (1e6 ** (torch.arange(0, 8, 2).float() / 8))
    emb = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., :4], x[..., 4:]
    ref = x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]
    assert torch.allclose(apply_rope(x, cos, sin), ref)
    assert torch.allclose(apply_rope(x, cos, sin)[0], x[0])  # position 0 is the identity


def _reference_rope(positions: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The reference's cos/sin: computed for the pass, [T, D]."""
    freqs = positions.float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


@pytest.mark.parametrize(("d", "theta"), [(128, 1e6), (16, 1e6), (64, 1e4)])
def test_rope_rows_are_the_references_to_the_bit(d: int, theta: float) -> None:
    """The CPU's kept tables give each position the bits the reference computes per pass
    (the real head size and positions up to the 8B's context included)."""
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    enc = Qwen3Encoder(Qwen3Config(64, 32, 64, 1, 2, 1, d, rope_theta=theta,
                                   max_position_embeddings=40960))
    enc.inv_freq.copy_(inv)
    for positions in (torch.arange(7), torch.randint(0, 40960, (3000,)), torch.arange(600)):
        got = enc.rope(positions)
        want = _reference_rope(positions, inv)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert enc._rope_tables is not None and enc._rope_tables[0].shape[0] <= 40960


def test_a_low_accuracy_cos_is_computed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """MKL's first cos/sin in a thread sometimes runs at its ~11-bit accuracy (cos(1) =
    0.5403335): the table is checked against float64 and computed again."""
    inv = 1.0 / (1e6 ** (torch.arange(0, 16, 2).float() / 16))
    want = rope_tables(inv, 600)
    real, calls = torch.Tensor.cos, []

    def first_call_off(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return real(x) * (1 + 5e-5) if len(calls) == 1 else real(x)

    monkeypatch.setattr(torch.Tensor, "cos", first_call_off)
    got = rope_tables(inv, 600)
    assert len(calls) == 2
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    monkeypatch.setattr(torch.Tensor, "cos", lambda x: real(x) * (1 + 5e-5))  # never right
    got = rope_tables(inv, 600)
    x = (torch.arange(600).float()[:, None] * inv[None, :]).double().numpy()
    assert np.abs(got[0].double().numpy() - np.cos(x)).max() < 1e-7


def test_pad_rows_keeps_results() -> None:
    w, x = torch.randn(32, 16), torch.randn(3, 16)
    assert pad_rows(x).shape == (16, 16)
    assert torch.allclose(F.linear(pad_rows(x), w)[:3], F.linear(x, w), atol=1e-6)


def test_config_from_transformers_v4_and_v5_dicts() -> None:
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=4, model_type="qwen3")
    v4 = Qwen3Config.from_dict({**base, "rope_theta": 1e6, "rope_scaling": None})
    v5 = Qwen3Config.from_dict({**base, "rope_parameters": {"rope_theta": 1e6,
                                                            "rope_type": "default"}})
    assert v4 == v5 and v4.rope_theta == 1e6
    with pytest.raises(ValueError, match="Qwen3"):
        Qwen3Config.from_dict({**base, "model_type": "bert"})
    with pytest.raises(ValueError, match="rope"):
        Qwen3Config.from_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4}})


def test_config_fields_the_forward_would_ignore_are_refused() -> None:
    """A review's: a checkpoint with ``hidden_act: gelu`` or sliding-window attention loaded
    and was computed as SiLU with full attention (0.015-0.02 off transformers) without a
    word. They are refused; the configs transformers writes for Qwen3 load."""
    from transformers import Qwen3Config as HFConfig

    shape = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    plain = HFConfig(**shape).to_dict()  # as transformers saves it (layer_types, v5)
    assert Qwen3Config.from_dict(plain).num_hidden_layers == 2
    old = {k: v for k, v in plain.items() if k != "layer_types"}  # as 4.x saved it
    assert Qwen3Config.from_dict({**old, "use_sliding_window": False, "sliding_window": None,
                                  "max_window_layers": 28}) == Qwen3Config.from_dict(plain)
    # a window that no layer uses (max_window_layers covers them all) changes nothing
    assert Qwen3Config.from_dict({**old, "use_sliding_window": True, "sliding_window": 64,
                                  "max_window_layers": 2}) == Qwen3Config.from_dict(plain)
    assert Qwen3Config.from_dict({**old, "hidden_act": "swish"}) == Qwen3Config.from_dict(plain)
    # without max_window_layers, transformers' 28: a 2-layer model has no sliding layer
    bare = {k: v for k, v in old.items() if k != "max_window_layers"}
    assert Qwen3Config.from_dict({**bare, "use_sliding_window": True, "sliding_window": 64}
                                 ) == Qwen3Config.from_dict(plain)
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        Qwen3Config.from_dict(HFConfig(**shape, hidden_act="gelu").to_dict())
    with pytest.raises(ValueError, match="sliding-window"):
        Qwen3Config.from_dict(HFConfig(**shape, use_sliding_window=True, sliding_window=64,
                                       max_window_layers=0).to_dict())
    with pytest.raises(ValueError, match="sliding-window"):
        Qwen3Config.from_dict({**old, "use_sliding_window": True, "sliding_window": 64,
                               "max_window_layers": 1})


def test_norm_rope_takes_a_weight_row_per_group_of_heads() -> None:
    """q and k in one call: x [t, G, Hkv, D] with a weight row per group (the query groups'
    q_norm, the last group's k_norm) == each group through the reference chain."""
    torch.manual_seed(3)
    t, groups, hkv, d = 12, 3, 2, 16
    x = torch.randn(t, groups * hkv * d + 8)[:, :-8].view(t, groups, hkv, d)  # strided rows
    norms = [RMSNorm(d, 1e-6) for _ in range(2)]
    with torch.no_grad():
        for n in norms:
            n.weight.copy_(torch.rand(d) + 0.5)
    weight = torch.stack([norms[0].weight, norms[0].weight, norms[1].weight]).float()[:, None]
    emb = torch.arange(t).float()[:, None] * (1.0 / (1e6 ** (torch.arange(0, d, 2).float() / d)))
    cos, sin = torch.cat([emb, emb], -1).cos(), torch.cat([emb, emb], -1).sin()
    out = torch.empty(t, groups, hkv, d)
    with torch.inference_mode():
        norm_rope(x, weight, 1e-6, cos, sin, out)
        for gi, n in enumerate((norms[0], norms[0], norms[1])):
            ref = apply_rope(n(x[:, gi]), cos, sin)
            assert torch.allclose(out[:, gi], ref, atol=1e-5), gi


def _small(layers: int) -> Qwen3Config:
    """64 wide, an MLP of 128: the float16 overflow tests' shape."""
    return Qwen3Config(vocab_size=100, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16)


def _randomised(module: Any, gen: torch.Generator) -> Any:
    """``module`` with every parameter drawn from N(0, 0.05^2)."""
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.05
    return module


def _massive(mlp: MLP) -> None:
    """Neuron 3 of ``mlp`` makes a SwiGLU value of ~9e4 for an input row of ones (float16
    ends at 65,504: a Qwen model's massive-activation tokens reach such values)."""
    hidden = mlp.down_proj.weight.shape[0]
    mlp.gate_up_proj.weight.data[3] = 300 / hidden  # gate
    mlp.gate_up_proj.weight.data[mlp.inter + 3] = 300 / hidden  # up


def _massive_mlp() -> tuple[MLP, torch.Tensor]:
    """A float16 :func:`_massive` MLP and a batch: a row of ones between two ordinary ones."""
    gen = torch.Generator().manual_seed(0)
    mlp = _randomised(MLP(_small(1)), gen)
    _massive(mlp)
    mlp.half()
    x = torch.randn(3, 64, generator=gen).half()
    x[1] = 1.0
    return mlp, x


def test_fp16_mlp_keeps_a_massive_activation_finite() -> None:
    mlp, x = _massive_mlp()
    gate, up = mlp.gate_up_proj(x).split(mlp.inter, dim=-1)
    assert torch.isinf(F.silu(gate) * up).any()  # the reference's float16 chain: inf
    want = F.linear(F.silu(gate.float()) * up.float(), mlp.down_proj.weight.float())
    got = mlp(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got[1], want[1], rtol=2e-3, atol=2e-2)
    # the ordinary rows are the reference's chain, to the bit
    ref = mlp.down_proj(F.silu(gate) * up).float()
    assert torch.equal(got[[0, 2]], ref[[0, 2]])
    # and a row does not depend on the batch's others
    assert torch.equal(mlp(x[1:2]), got[1:2]) and torch.equal(mlp(x[:1]), got[:1])


def test_fp16_encoder_stays_finite_where_the_reference_chain_overflows() -> None:
    """A whole float16 pass over a token whose first-layer MLP makes ~9e4: finite, and the
    float32 pass's rows within float16's tolerance (the pass used to give NaN)."""
    cfg = _small(2)
    model = _randomised(Qwen3Encoder(cfg), torch.Generator().manual_seed(1))
    for norm in (model.layers[0].input_layernorm, model.layers[0].post_attention_layernorm,
                 model.layers[1].input_layernorm, model.layers[1].post_attention_layernorm,
                 model.norm):
        norm.weight.data.fill_(1.0)
    model.layers[0].self_attn.o_proj.weight.data.zero_()  # the MLP sees token 5's embedding
    model.embed_tokens.weight.data[5] = 1.0
    _massive(model.layers[0].mlp)
    ids = torch.tensor([7, 5, 9, 2, 5, 4, 11])
    want = model(ids, [3, 4])
    half = Qwen3Encoder(cfg)
    half.load_state_dict(model.state_dict())
    for p in half.parameters():  # as the loader: parameters in the dtype, RoPE's stay
        p.data = p.data.half()
    half.dtype = torch.float16
    got = half(ids, [3, 4])
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert F.cosine_similarity(got, want).min() > 0.999
