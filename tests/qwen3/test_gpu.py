"""CUDA against CPU and transformers on the tiny checkpoints: fp32 parity, bf16/fp16 without NaN
and close to fp32, the varlen kernels against per-sequence attention, CUDA graphs against eager,
batch invariance, and the device/dtype the model reports. Run with ``-m gpu``; skipped without
CUDA (the device script benchmarks/gpu_check.py runs them)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from qwen_tiny import TEXTS, Tiny, build_tiny, reference_embed, sdpa_varlen

from smysl import Embedder
from smysl.qwen3.embedder import Embedder as LocalEmbedder

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

QUERIES = ["как работает поиск?", "what is a vector database", "x"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return (a * b).sum(axis=1)  # rows are unit length


@pytest.fixture(scope="module")
def cpu(tiny_dir: Path) -> LocalEmbedder:
    return Embedder.load(str(tiny_dir), device="cpu")


def test_cuda_float32_matches_cpu(tiny_dir: Path, cpu: LocalEmbedder) -> None:
    gpu = Embedder.load(str(tiny_dir), device="cuda", dtype="float32")
    info = gpu.info()
    assert info.device is not None and info.device.startswith("cuda")
    assert info.dtype == "float32"
    docs = gpu.embed_documents(TEXTS)
    assert np.isfinite(docs).all()
    # TF32 is off by default for matmuls, so only summation order differs from the CPU
    assert np.abs(docs - cpu.embed_documents(TEXTS)).max() < 1e-4
    q = gpu.embed_queries(QUERIES, task="qa", dimensions=32)
    assert _cosines(q, cpu.embed_queries(QUERIES, task="qa", dimensions=32)).min() > 0.9999


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_is_finite_and_close(tiny_dir: Path, cpu: LocalEmbedder,
                                            dtype: str) -> None:
    gpu = Embedder.load(str(tiny_dir), device="cuda", dtype=dtype)
    assert gpu.info().dtype == dtype
    texts = [*TEXTS, "длинный текст " * 150]  # ~450 tokens: the longest the tiny model takes
    got = gpu.embed_documents(texts)
    assert np.isfinite(got).all(), f"NaN/inf in {dtype}"
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # RMSNorm and the residual stream stay float32; only the matmuls round
    assert _cosines(got, cpu.embed_documents(texts)).min() > 0.99


def test_cuda_float32_matches_transformers(tiny_dir: Path) -> None:
    gpu = Embedder.load(str(tiny_dir), device="cuda", dtype="float32")
    assert np.abs(gpu.embed(TEXTS) - reference_embed(tiny_dir, TEXTS)).max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_varlen_kernels_match_per_sequence_attention(dtype: torch.dtype) -> None:
    from smysl.qwen3.cuda import varlen_fn

    torch.manual_seed(0)
    lengths = [1, 7, 300, 64, 2, 129]
    t = sum(lengths)
    q = torch.randn(t, 16, 128, device="cuda", dtype=dtype)
    k, v = (torch.randn(t, 8, 128, device="cuda", dtype=dtype) for _ in range(2))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32, device="cuda")
    cu_last = torch.arange(len(lengths) + 1, dtype=torch.int32, device="cuda")
    attn = varlen_fn(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    want = sdpa_varlen(q.float(), k.float(), v.float(), cu, cu, 300, 300, True)
    got = attn(q, k, v, cu, cu, 300, 300, True)
    assert torch.allclose(got.float(), want, atol=tol)
    last = cu[1:] - 1
    got_last = attn(q[last.long()].contiguous(), k, v, cu_last, cu, 1, 300, False)
    assert torch.allclose(got_last.float(), want[last.long()], atol=tol)
    # a max_len above the longest sequence (what a graph bucket passes) changes nothing
    assert torch.allclose(attn(q, k, v, cu, cu, 512, 512, True).float(), got.float(), atol=1e-6)


def test_eager_sizes_past_the_graphs_run_at_load(tiny_dir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A load runs one eager pass of each doubling past the largest graph, up to the batch
    budget or the per-token slice, the smaller (the tiny model's slice is the budget; a
    process's first pass of a size ran 1.2x slower than the next)."""
    from smysl.qwen3.contract import BATCH_TOKENS

    with caplog.at_level("INFO", logger="smysl.qwen3.cuda"):
        m = Embedder.load(str(tiny_dir), device="cuda", dtype="bfloat16")
    assert m.engine._cuda is not None
    sizes = m.engine._cuda.warmed
    assert sizes[0] == 4096 and sizes[-1] == BATCH_TOKENS["cuda"]
    assert sizes == [4096 * 2**i for i in range(len(sizes))]
    assert "eager passes of" in caplog.text
    # and each linear layer's product at every row count up to the largest pass
    assert m.engine._cuda.swept[0] == 1 and m.engine._cuda.swept[-1] == sizes[-1]
    assert "matrix products of 1 ..." in caplog.text
    eager = Embedder.load(str(tiny_dir), device="cuda", dtype="bfloat16", cuda_graphs=0)
    assert eager.engine._cuda is not None and eager.engine._cuda.warmed == sizes


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_graphs_match_eager(tiny_dir: Path, dtype: str) -> None:
    graphs = Embedder.load(str(tiny_dir), device="cuda", dtype=dtype)
    eager = Embedder.load(str(tiny_dir), device="cuda", dtype=dtype, cuda_graphs=0)
    assert graphs.info().cuda_graphs == [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert eager.info().cuda_graphs is None
    assert graphs.engine.cuda_graphs and not eager.engine.cuda_graphs
    texts = [*TEXTS, *QUERIES, "длинный текст " * 150]  # the last one runs eagerly
    for batch in ([texts[0]], texts[:5], texts):
        a, b = graphs.embed(batch), eager.embed(batch)
        if dtype == "float32":
            assert np.abs(a - b).max() < 1e-5
        else:
            assert _cosines(a, b).min() > 0.9999


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fused_kernels_match_the_eager_pass(tiny_dir: Path, dtype: str) -> None:
    """The fused Triton kernels (on by default in bf16/fp16) give the eager pass's vectors to
    float tolerance, replayed in graphs and eager; float32 never runs them."""
    fused = Embedder.load(str(tiny_dir), device="cuda", dtype=dtype)
    eager = Embedder.load(str(tiny_dir), device="cuda", dtype=dtype, cuda_kernels=False)
    assert fused.info().kernel == "torch+triton" and eager.info().kernel == "torch"
    assert Embedder.load(str(tiny_dir), device="cuda", dtype="float32").info().kernel == "torch"
    texts = [*TEXTS, *QUERIES, "длинный текст " * 150]  # the last one past the graphs
    for batch in ([texts[0]], texts[:5], texts):
        assert _cosines(fused.embed(batch), eager.embed(batch)).min() > 0.9999


def test_fused_kernels_that_disagree_are_not_used(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The load-time check: kernels whose rows differ from the eager pass's leave the engine
    eager, with a warning; so do kernels that fail."""
    from smysl.qwen3 import kernels

    def wrong(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        return -kernels.model_run(model, *args, **kwargs)

    monkeypatch.setattr(kernels, "model_run", kernels.run, raising=False)
    monkeypatch.setattr(kernels, "run", wrong)
    with caplog.at_level("WARNING", logger="smysl.qwen3.cuda"):
        m = Embedder.load(str(tiny_dir), device="cuda", dtype="bfloat16")
    assert m.info().kernel == "torch" and "disagree" in caplog.text
    ref = Embedder.load(str(tiny_dir), device="cpu").embed(TEXTS)
    assert _cosines(m.embed(TEXTS), ref).min() > 0.999

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("no compiler")

    monkeypatch.setattr(kernels, "run", broken)
    caplog.clear()
    with caplog.at_level("WARNING", logger="smysl.qwen3.cuda"):
        m = Embedder.load(str(tiny_dir), device="cuda", dtype="bfloat16")
    assert m.info().kernel == "torch" and "no compiler" in caplog.text

    # whole passes that agree do not make up for a layer that does not
    monkeypatch.setattr(kernels, "run", kernels.model_run)
    monkeypatch.setattr(kernels, "layer_error", lambda *args, **kwargs: 0.0201)
    caplog.clear()
    with caplog.at_level("WARNING", logger="smysl.qwen3.cuda"):
        m = Embedder.load(str(tiny_dir), device="cuda", dtype="bfloat16")
    assert m.info().kernel == "torch" and "off by 2.01e-02" in caplog.text


def test_cuda_batch_invariance_bf16(tiny_dir: Path) -> None:
    gpu = Embedder.load(str(tiny_dir), device="cuda", dtype="bfloat16")
    rng = random.Random(5)
    texts = [f"текст {i} " * rng.randint(1, 60) for i in range(80)]
    together = gpu.embed(texts)
    alone = np.concatenate([gpu.embed([t]) for t in texts])
    shuffled = list(range(len(texts)))
    rng.shuffle(shuffled)
    mixed = gpu.embed([texts[i] for i in shuffled])[np.argsort(shuffled)]
    assert _cosines(together, alone).min() > 0.9999
    assert _cosines(together, mixed).min() > 0.9999


def test_default_on_cuda_is_bfloat16(tiny_dir: Path) -> None:
    info = Embedder.load(str(tiny_dir)).info()  # device auto -> CUDA, dtype auto -> bf16
    assert info.device is not None and info.device.startswith("cuda")
    assert info.dtype == "bfloat16"


def test_cuda_batches_agree_with_single_inputs(tiny_dir: Path) -> None:
    # packed varlen batches, graph buckets with padding slots, and eager passes: a text's
    # vector must not depend on its companions beyond float tolerance
    gpu = Embedder.load(str(tiny_dir), device="cuda", dtype="float32")
    rng = random.Random(3)
    texts = [*TEXTS, *(f"text {i} " * rng.randint(1, 40) for i in range(30))]
    together = gpu.embed(texts)
    alone = np.concatenate([gpu.embed([t]) for t in texts])
    assert _cosines(together, alone).min() > 0.99999


def test_sharded_bf16_checkpoint_on_cuda(tiny_variants: dict[str, Tiny]) -> None:
    t = tiny_variants["gqa4-untied-base-lm-sharded"]
    cpu = Embedder.load(str(t.path), device="cpu").embed_documents(TEXTS)
    gpu = Embedder.load(str(t.path), device="cuda", dtype="bfloat16").embed_documents(TEXTS)
    assert np.isfinite(gpu).all()
    assert _cosines(gpu, cpu).min() > 0.99


def test_fp16_survives_large_residual_activations(tmp_path: Path) -> None:
    # Qwen3-8B's residual stream holds values whose squares (RMSNorm) pass fp16's 65504; the
    # engine keeps the residual and the norms in float32. Embeddings scaled by 8e3 (still
    # representable in fp16, up to ~4.5e4) make every fp16 RMSNorm overflow.
    from safetensors.torch import load_file, save_file

    t = build_tiny(tmp_path / "big", seed=5)
    weights = load_file(t.path / "model.safetensors")
    key = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights[key] = weights[key] * 8e3
    save_file(weights, t.path / "model.safetensors", metadata={"format": "pt"})
    cpu = Embedder.load(str(t.path), device="cpu").embed_documents(TEXTS)
    gpu = Embedder.load(str(t.path), device="cuda", dtype="float16").embed_documents(TEXTS)
    assert np.isfinite(gpu).all()
    assert _cosines(gpu, cpu).min() > 0.99


def test_int4_on_cuda_matches_int4_on_cpu(tiny_dir: Path, tmp_path: Path) -> None:
    """Issue 14: ``quantize="int4"`` on CUDA (4-bit planes rebuilt per call for cuBLAS, the
    weights the CPU's dequantised regime rebuilds) gives the CPU's int4 vectors to bf16
    tolerance, from safetensors and from a GGUF file's blocks (its embedding table kept as
    blocks on the GPU); CUDA graphs replay it like eager."""
    from qwen_tiny import write_gguf

    from smysl.qwen3.quantize import Int4GemmLinear

    texts = [*TEXTS, "длинный текст " * 150]
    path = write_gguf(tiny_dir, tmp_path / "m.gguf", ftype="Q8_0")
    for src in (str(tiny_dir), str(path)):
        cpu = Embedder.load(src, device="cpu", quantize="int4")
        gpu = Embedder.load(src, device="cuda", quantize="int4")
        info = gpu.info()
        assert info.quantization == "int4" and info.dtype == "bfloat16"
        assert info.kernel == "int4+triton"  # the fused kernels around the int4 matmuls
        assert info.device is not None and info.device.startswith("cuda")
        layers = [m for m in gpu.engine.model.modules()  # type: ignore[attr-defined]
                  if isinstance(m, Int4GemmLinear)]
        assert layers and all(m.codes.is_cuda for m in layers)
        got = gpu.embed_documents(texts)
        assert np.isfinite(got).all()
        assert _cosines(got, cpu.embed_documents(texts)).min() > 0.999, src
        eager = Embedder.load(src, device="cuda", quantize="int4", cuda_graphs=0)
        assert _cosines(eager.embed_documents(texts), got).min() > 0.99999, src


def test_close_waits_for_the_work_queued_on_the_device(tiny_dir: Path) -> None:
    """A close returns once the device's queued work has ended: a server's thread waiting for
    a pass must not be inside torch when the interpreter exits (that aborts the process)."""
    gpu = Embedder.load(str(tiny_dir), device="cuda", dtype="bfloat16")
    engine = gpu.engine
    wait = engine.submit([[1, 2, 3], [4, 5]])
    torch.cuda._sleep(2_000_000_000)  # ~1 s of device time queued behind the pass
    engine.close()
    assert torch.cuda.current_stream(engine.torch_device).query()  # type: ignore[attr-defined]
    assert wait().shape == (2, gpu.info().dimensions)
