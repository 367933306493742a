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


def test_layers_quantised_while_loading_equal_quantising_after(tiny_dir: Path) -> None:
    """Issue 14: ``quantize="int8"`` builds each int8 layer as soon as its (fused) weight is
    read, so no float copy of the whole model is ever held; the result is the same layers."""
    import json

    from smysl.qwen3.cpu import detect, int8_kernel
    from smysl.qwen3.model import Linear
    from smysl.qwen3.quantize import int8_linear

    cfg = json.loads((tiny_dir / "config.json").read_text())
    state = list(load_file(tiny_dir / "model.safetensors").items())
    made: list[tuple[int, ...]] = []

    make = int8_linear(int8_kernel(detect()))

    def spy(w: torch.Tensor) -> torch.nn.Module:
        made.append(tuple(w.shape))
        return make(w)

    streamed = build_encoder(cfg, state, torch.device("cpu"), torch.float32, linear=spy)
    after = build_encoder(cfg, state, torch.device("cpu"), torch.float32)
    layers = cfg["num_hidden_layers"]
    assert len(made) == 4 * layers  # qkv, o, gate|up, down per layer
    assert not any(isinstance(m, Linear) for m in streamed.modules())
    for name, m in list(after.named_modules()):
        if isinstance(m, Linear):
            parent, _, attr = name.rpartition(".")
            setattr(after.get_submodule(parent), attr, make(m.weight))
    ids, lengths = torch.arange(40) % 1000 + 5, [30, 10]
    assert torch.equal(streamed(ids, lengths), after(ids, lengths))


def test_half_precision_embeddings_stay_as_stored_in_float32(tiny_variants) -> None:  # type: ignore[no-untyped-def]
    """A bf16 checkpoint computed in float32 keeps its embedding table in bf16 (half the
    memory; the rows widen exactly): the same vectors as a float32 table."""
    import json

    path = tiny_variants["gqa2-untied-eos-bf16"].path
    cfg = json.loads((path / "config.json").read_text())
    state = list(load_file(path / "model.safetensors").items())
    kept = build_encoder(cfg, state, torch.device("cpu"), torch.float32)
    assert kept.embed_tokens.weight.dtype == torch.bfloat16 and kept.dtype == torch.float32
    assert kept.layers[0].mlp.down_proj.weight.dtype == torch.float32
    widened = build_encoder(cfg, [(k, v.float()) for k, v in state], torch.device("cpu"),
                            torch.float32)
    assert widened.embed_tokens.weight.dtype == torch.float32
    ids, lengths = torch.arange(40) % 1000 + 5, [30, 10]
    assert torch.equal(kept(ids, lengths), widened(ids, lengths))


def test_loading_imports_no_compiler(tiny_dir: Path) -> None:
    """Building the model on the meta device ran torch's reference decompositions (the
    embedding's random init, RoPE's frequencies), which import torch._dynamo: 1-3 s of every
    process start (CLI, server, engine process) for nothing. A load and a pass stay clear."""
    import subprocess
    import sys

    code = ("import sys, smysl; smysl.load(sys.argv[1], device='cpu').embed(['a']); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"


@pytest.mark.parametrize(("weight", "value", "where"), [
    ("layers.1.mlp.up_proj.weight", float("nan"), "[3, 5]"),
    ("norm.weight", float("-inf"), "[7]"),
    ("embed_tokens.weight", float("inf"), "[3, 5]")])
def test_a_weight_holding_nan_or_inf_is_refused(tiny_dir: Path, tmp_path: Path, weight: str,
                                                value: float, where: str) -> None:
    """A damaged checkpoint is refused at load, naming the weight and the first bad element,
    instead of computing NaN for every input (which reads as float16's overflow)."""
    import shutil

    from smysl import Embedder

    dst = shutil.copytree(tiny_dir, tmp_path / "m")
    (f,) = dst.glob("*.safetensors")
    state = load_file(f)
    key = next(k for k in state if k.removeprefix("model.") == weight)
    state[key][(3, 5) if state[key].ndim == 2 else (7,)] = value
    save_file(state, f, metadata={"format": "pt"})
    for dtype in ("float32", "bfloat16"):
        with pytest.raises(ValueError, match=rf"{weight} holds NaN or inf \(first at "
                                             rf"\{where[:-1]}\]\): the checkpoint is damaged"):
            Embedder.load(str(dst), device="cpu", dtype=dtype)
