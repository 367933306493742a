"""The plain-read safetensors reader and weight assembly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from smysl.qwen3.loader import build_encoder, read_safetensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reader_matches_safetensors(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = {"a": torch.randn(3, 5).to(dtype), "b.weight": torch.randn(7).to(dtype),
               "empty": torch.zeros(0, 4).to(dtype)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    got = dict(read_safetensors(tmp_path / "x.safetensors"))
    ref = load_file(tmp_path / "x.safetensors")
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k])


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    save_file({"a": torch.randn(100)}, tmp_path / "x.safetensors")
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        list(read_safetensors(tmp_path / "x.safetensors"))


def test_build_from_a_transformers_state_dict(tiny_dir: Path) -> None:
    import json

    from transformers import Qwen3Model

    cfg = json.loads((tiny_dir / "config.json").read_text())
    hf = Qwen3Model.from_pretrained(str(tiny_dir), dtype=torch.float32)
    enc = build_encoder(cfg, hf.state_dict().items(), torch.device("cpu"), torch.float32)
    assert torch.equal(enc.embed_tokens.weight, hf.embed_tokens.weight)
    q = hf.layers[0].self_attn.q_proj.weight
    assert torch.equal(enc.layers[0].self_attn.qkv_proj.weight[: q.shape[0]], q)
    with pytest.raises(ValueError, match="unexpected weight"):
        build_encoder(cfg, [("bogus.weight", torch.zeros(1))], torch.device("cpu"),
                      torch.float32)
