"""GGML block dequantisation against llama.cpp's reference (gguf-py), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smysl.qwen3 import ggml_quants as gq

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q4_0", "Q4_1",
                                  "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"])
def test_blocks_match_gguf_py(kind: str) -> None:
    from qwen_tiny import random_blocks

    qtype = getattr(gguf.GGMLQuantizationType, kind)
    per, width = gq.BLOCKS[int(qtype)]
    rng = np.random.default_rng(int(qtype))
    if kind == "Q8_0":  # any bytes; the scale finite
        raw = rng.integers(0, 256, size=(500, width), dtype=np.uint8)
        raw[:, :2] = rng.uniform(-0.01, 0.01, 500).astype(np.float16).view(np.uint8).reshape(-1, 2)
    else:
        raw = random_blocks((500, per), qtype, rng)
    want = gguf.quants.dequantize(raw, qtype).reshape(500, per)
    got = gq.DEQUANTIZE[int(qtype)](torch.from_numpy(raw.reshape(500, width))).numpy()
    assert np.array_equal(got, want)


def test_the_fixtures_q6_k_quantizer_round_trips() -> None:
    """``qwen_tiny.quantize_q6_k`` packs what llama.cpp's reference reads back: weights within
    about half a sub-block step (more where a small sub-block scale rounds coarsely to an
    int8 multiple of the block's ``d``)."""
    from qwen_tiny import quantize_q6_k

    x = np.random.default_rng(4).normal(0, 0.02, size=(8, 512)).astype(np.float32)
    back = gguf.quants.dequantize(quantize_q6_k(x), gguf.GGMLQuantizationType.Q6_K)
    err = np.abs(back.reshape(8, 512) - x).reshape(-1, 16)
    step = np.abs(x).reshape(-1, 16).max(-1) / 32
    assert (err.max(-1) <= step * 1.5).all() and (err.max(-1) <= step * 0.6).mean() > 0.9
    assert np.corrcoef(back.ravel(), x.ravel())[0, 1] > 0.999


def test_dequantize_into_dtype_in_steps() -> None:
    from qwen_tiny import random_blocks

    qtype = gguf.GGMLQuantizationType.Q4_K
    raw = random_blocks((6, 512), qtype, np.random.default_rng(1))  # 12 blocks
    flat = torch.from_numpy(raw.reshape(-1))
    f32 = gq.dequantize(flat, int(qtype), (6, 512), torch.float32, step=5)
    assert torch.equal(f32, torch.from_numpy(gguf.quants.dequantize(raw, qtype)))
    bf16 = gq.dequantize(flat, int(qtype), (6, 512), torch.bfloat16, step=5)
    assert torch.equal(bf16, f32.to(torch.bfloat16))


def _matrix(kind: str, rows: int, cols: int, seed: int) -> tuple[gq.QuantTensor, torch.Tensor]:
    """Random ``kind`` blocks as a QuantTensor, and llama.cpp's dequantisation of them."""
    from qwen_tiny import random_blocks

    qtype = getattr(gguf.GGMLQuantizationType, kind)
    raw = random_blocks((rows, cols), qtype, np.random.default_rng(seed))
    t = gq.QuantTensor(int(qtype), torch.from_numpy(raw.reshape(rows, -1)), (rows, cols))
    return t, torch.from_numpy(gguf.quants.dequantize(raw, qtype)).reshape(rows, cols)


def _sum_planes(planes: list[gq.Plane]) -> torch.Tensor:
    """The float64 matrix the planes stand for."""
    out = 0
    for p in planes:
        rows, cols = p.q.shape
        g = p.q.double().view(rows, -1, 32)
        out = out + (p.scale.double()[..., None] * g - p.mins.double()[..., None])
    return out.view(rows, cols)


@pytest.mark.parametrize(("kind", "count"), [("Q4_K", 1), ("Q5_K", 2), ("Q8_0", 2), ("Q4_0", 1),
                                             ("Q4_1", 1), ("Q5_0", 2), ("Q5_1", 2), ("IQ4_NL", 2),
                                             ("IQ4_XS", 2)])
def test_planes_are_exact_for_32_column_scales(kind: str, count: int) -> None:
    """Issue 14: Q4_K, Q5_K, Q8_0, the legacy Q4_0/Q4_1/Q5_0/Q5_1 and the IQ4 blocks (their
    non-uniform grid values are integers) become 4-bit planes (codes 0..15, groups of 32)
    that sum to llama.cpp's dequantisation (up to its float32 rounding)."""
    t, w = _matrix(kind, 48, 512, seed=len(kind) + count)
    planes = gq.planes(t)
    assert len(planes) == count
    for p in planes:
        assert p.q.shape == (48, 512) and p.scale.shape == p.mins.shape == (48, 16)
        assert int(p.q.min()) >= 0 and int(p.q.max()) <= 15
    err = (_sum_planes(planes) - w.double()).abs().max().item()
    assert err <= 1e-6 * w.abs().max().item()


@pytest.mark.parametrize(("kind", "fraction"), [("Q6_K", 1 / 8), ("Q3_K", 1 / 64)])
def test_planes_of_16_column_scales_round_within_the_bound(kind: str, fraction: float) -> None:
    """Q6_K and Q3_K scale every 16 columns: in each group of 32 the sub-block with the larger
    scale is exact, the other rounded to at most ``fraction`` of the larger one's step (twice
    that at the clamped end when the halves' ranges span 257 grid points)."""
    t, w = _matrix(kind, 32, 512, seed=11)
    planes = gq.planes(t)
    assert len(planes) == 2
    codes = gq.CODES[t.kind](t.data.reshape(-1, gq.BLOCKS[t.kind][1]))
    step = codes.scale.abs().view(32, -1, 2).amax(-1).double()  # [rows, groups]
    err = (_sum_planes(planes) - w.double()).abs().view(32, -1, 32)
    bound = step[..., None] * fraction * 1.0001 + 1e-12
    assert (err <= 2 * bound).all()
    assert (err > bound).double().mean() < 0.01  # the clamped ends only
    big = codes.scale.abs().view(32, -1, 2).argmax(-1)  # the exact half of each group
    exact = err.view(32, -1, 2, 16).gather(2, big[..., None, None].expand(-1, -1, 1, 16))
    assert exact.max().item() <= 1e-6 * w.abs().max().item()
    assert err.max().item() > 0  # the other halves did round (random scales differ)


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q4_0", "Q5_1",
                                  "IQ4_XS"])
def test_int4_layer_from_blocks_is_the_dequantised_weight(kind: str) -> None:
    """A GGUF matrix kept as 4-bit planes multiplies like its dequantised weights, up to bf16
    rounding of activations, group scales and outputs (Q6_K/Q3_K: and their 8-bit re-coding;
    random blocks have unrelated sub-block scales, so it errs more here than on a quantised
    matrix, see test_gguf.py)."""
    from smysl.qwen3.quantize import Int4Linear

    t, w = _matrix(kind, 64, 512, seed=2)
    x = torch.randn(20, 512)
    want = x.double() @ w.double().t()
    got = Int4Linear.from_blocks(t)(x)
    assert got.shape == (20, 64) and got.dtype == torch.bfloat16
    assert ((got.double() - want).norm() / want.norm()) < 1e-2
    assert torch.equal(t.dequantize(), w)
    rows = torch.tensor([5, 0, 63])
    assert torch.equal(t.rows(rows, torch.float32), w[rows])


def test_int4_layer_from_float_weights() -> None:
    from smysl.qwen3.quantize import Int4Linear, Int8WeightLinear, int4_fits, int4_linear

    w, x = torch.randn(48, 96) * 0.02, torch.randn(7, 96)
    want = x @ w.t()
    for layer in (Int4Linear.from_float(w), Int8WeightLinear(w)):
        got = layer(x).float()
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cos > 0.99, type(layer).__name__
    assert int4_fits((48, 96)) and not int4_fits((40, 96)) and not int4_fits((48, 80))
    make = int4_linear(gguf=False)
    assert isinstance(make(torch.randn(40, 96)), Int8WeightLinear)
    assert isinstance(make(w), Int4Linear)
    assert isinstance(int4_linear(gguf=True)(w), Int8WeightLinear)


def test_mixed_type_fused_weight_keeps_each_part() -> None:
    """A fused q|k|v whose parts differ in type (Q4_K_M's Q6_K attn_v) becomes one layer per
    part, outputs side by side: none is re-coded to another part's type."""
    from smysl.qwen3.quantize import Int4Linear, StackedLinear, int4_linear

    (q, wq), (v, wv) = _matrix("Q4_K", 64, 256, seed=5), _matrix("Q6_K", 32, 256, seed=6)
    fused = gq.QuantTensor.cat([q, v])
    assert isinstance(fused, gq.QuantStack) and fused.shape == (96, 256)
    assert torch.equal(fused.dequantize(), torch.cat([wq, wv]))
    layer = int4_linear(gguf=True)(fused)
    assert isinstance(layer, StackedLinear)
    assert [type(p) for p in layer.parts] == [Int4Linear, Int4Linear]
    x = torch.randn(3, 256)
    want = x.double() @ torch.cat([wq, wv]).double().t()
    assert ((layer(x).double() - want).norm() / want.norm()) < 1e-2


def test_int4_layers_packed_in_row_chunks_equal_one_pack(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The int4 kernel packs 64-row blocks independently: building a layer chunk by chunk
    (bounded memory) gives the very layer one pack gives."""
    from smysl.qwen3 import quantize

    t, _ = _matrix("Q8_0", 208, 256, seed=3)
    w, x = torch.randn(208, 256) * 0.02, torch.randn(9, 256)
    whole = [quantize.Int4Linear.from_blocks(t)(x), quantize.Int4Linear.from_float(w)(x)]
    monkeypatch.setattr(quantize, "PACK_ELEMENTS", 64 * 256)
    assert quantize.pack_rows(256) == 64
    chunked = [quantize.Int4Linear.from_blocks(t)(x), quantize.Int4Linear.from_float(w)(x)]
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))
