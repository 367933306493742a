"""GGML block dequantisation against llama.cpp's reference (gguf-py), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smysl.qwen3 import ggml_quants as gq

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K"])
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


def test_dequantize_into_dtype_in_steps() -> None:
    from qwen_tiny import random_blocks

    qtype = gguf.GGMLQuantizationType.Q4_K
    raw = random_blocks((6, 512), qtype, np.random.default_rng(1))  # 12 blocks
    flat = torch.from_numpy(raw.reshape(-1))
    f32 = gq.dequantize(flat, int(qtype), (6, 512), torch.float32, step=5)
    assert torch.equal(f32, torch.from_numpy(gguf.quants.dequantize(raw, qtype)))
    bf16 = gq.dequantize(flat, int(qtype), (6, 512), torch.bfloat16, step=5)
    assert torch.equal(bf16, f32.to(torch.bfloat16))


def test_int4_layer_from_q4_k_blocks_is_the_dequantised_weight() -> None:
    """Issue 14: a Q4_K matrix kept 4-bit (its own 32-column groups) multiplies like its
    dequantised weights, up to bf16 rounding of activations, group scales and outputs."""
    from qwen_tiny import random_blocks

    from smysl.qwen3.quantize import Int4Linear

    qtype = gguf.GGMLQuantizationType.Q4_K
    raw = random_blocks((64, 512), qtype, np.random.default_rng(2))
    t = gq.QuantTensor(int(qtype), torch.from_numpy(raw.reshape(64, -1)), (64, 512))
    w = torch.from_numpy(gguf.quants.dequantize(raw, qtype))
    x = torch.randn(20, 512)
    got = Int4Linear.from_q4_k(t)(x).float()
    want = x @ w.t()
    assert got.shape == (20, 64)
    assert ((got - want).norm() / want.norm()) < 1e-2
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
    assert isinstance(int4_linear(torch.randn(40, 96)), Int8WeightLinear)


def test_int4_layers_packed_in_row_chunks_equal_one_pack(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The int4 kernel packs 64-row blocks independently: building a layer chunk by chunk
    (bounded memory) gives the very layer one pack gives."""
    from qwen_tiny import random_blocks

    from smysl.qwen3 import quantize

    qtype = gguf.GGMLQuantizationType.Q4_K
    raw = random_blocks((208, 256), qtype, np.random.default_rng(3))
    t = gq.QuantTensor(int(qtype), torch.from_numpy(raw.reshape(208, -1)), (208, 256))
    w, x = torch.randn(208, 256) * 0.02, torch.randn(9, 256)
    whole = [quantize.Int4Linear.from_q4_k(t)(x), quantize.Int4Linear.from_float(w)(x)]
    monkeypatch.setattr(quantize, "PACK_ROWS", 64)
    chunked = [quantize.Int4Linear.from_q4_k(t)(x), quantize.Int4Linear.from_float(w)(x)]
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))
