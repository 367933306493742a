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
