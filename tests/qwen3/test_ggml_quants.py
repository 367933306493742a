"""GGML block dequantisation against llama.cpp's reference (gguf-py), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smysl.qwen3 import ggml_quants as gq

gguf = pytest.importorskip("gguf")


#: The IQ types below 4 bits, which gguf-py decodes for smysl (their grids).
GRID = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "Q4_0", "Q4_1",
                                  "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", *GRID])
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


@pytest.mark.parametrize("kind", ["Q2_K", "IQ2_XXS", "IQ3_S", "IQ1_M"])
def test_planes_of_q2_k_and_grids_round_within_the_groups_range(kind: str) -> None:
    """Q2_K scales and offsets every 16 columns by unrelated factors, and the IQ types' values
    lie on grids: their two planes are an 8-bit code over each 32-column group's largest
    magnitude, off by at most half a step of that code (1/254 of the magnitude), well inside
    the format's own step."""
    t, w = _matrix(kind, 32, 512, seed=12)
    planes = gq.planes(t)
    assert len(planes) == 2
    for p in planes:
        assert int(p.q.min()) >= 0 and int(p.q.max()) <= 15
    err = (_sum_planes(planes) - w.double()).abs().view(32, -1, 32)
    top = w.double().abs().view(32, -1, 32).amax(-1, keepdim=True)
    assert (err <= top / 254 * 1.0001 + 1e-12).all()
    assert err.max().item() > 0


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "Q4_0", "Q5_1",
                                  "IQ4_XS", "IQ2_XXS", "IQ1_M"])
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


def _int4_layer(kind: str, rows: int, cols: int, seed: int):  # type: ignore[no-untyped-def]
    from smysl.qwen3.quantize import Int4Linear

    if kind == "float":
        return Int4Linear.from_float(torch.randn(rows, cols, generator=torch.Generator()
                                                 .manual_seed(seed)) * 0.02)
    return Int4Linear.from_blocks(_matrix(kind, rows, cols, seed)[0])


@pytest.mark.parametrize("kind", ["Q4_K", "Q8_0", "Q6_K", "float"])
def test_int4_dequantised_regime_rebuilds_the_kernels_weights(kind: str,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Above ``DEQUANT_ROWS`` rows an int4 layer rebuilds its weights in bf16 (one or two
    planes; several column blocks, the last one short) and runs a bf16 GEMM. Fed the identity,
    both regimes return the weights themselves: the kernel's are float32 rounded to bf16 on
    output, the rebuilt ones rounded once: equal to within one bf16 step."""
    from smysl.qwen3 import quantize

    if not quantize.dequantises(192):
        pytest.skip("no dequantised int4 regime here (bf16 emulated or unknown layout)")
    layer = _int4_layer(kind, 192, 256, seed=7)
    b = quantize._block_rows()
    monkeypatch.setattr(quantize, "DEQUANT_ELEMENTS", 256 * 2 * b)  # blocks of 2B columns
    eye = torch.eye(256, dtype=torch.bfloat16)
    kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(
        eye.repeat(1, layer.planes), layer.packed, quantize.GROUP, layer.scale_zero).float()
    rebuilt = quantize.dequant_mm(eye, layer.packed, layer.scale_zero, 256).float()
    assert rebuilt.shape == (256, 192)
    assert (rebuilt - kernel).abs().le(kernel.abs() * 2**-8 + 1e-30).all()
    # the layer's own dispatch: the same rows, below and above the threshold
    x = torch.randn(40, 256)
    monkeypatch.setattr(quantize, "DEQUANT_ROWS", 10**9)
    slow = layer(x).double()
    monkeypatch.setattr(quantize, "DEQUANT_ROWS", 16)
    fast = layer(x).double()
    want = x.double() @ kernel.double()
    assert fast.shape == (40, 192)
    for got in (slow, fast):
        assert ((got - want).norm() / want.norm()) < 5e-3


def test_int4_dequantised_rows_do_not_depend_on_the_batch(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Within the dequantised regime a row's result is the same in any batch (the bf16 GEMM's
    rows are independent); between the regimes the vectors move in the last bits only."""
    from smysl.qwen3 import quantize

    if not quantize.dequantises(256):
        pytest.skip("no dequantised int4 regime here (bf16 emulated or unknown layout)")
    monkeypatch.setattr(quantize, "DEQUANT_ROWS", 192)
    layer, x = _int4_layer("Q4_K", 256, 512, seed=8), torch.randn(300, 512)
    whole = layer(x)
    assert torch.equal(layer(x[:200]), whole[:200])
    assert torch.equal(layer(x[100:]), whole[100:])
    small = layer(x[:20]).float()  # the int4 kernel
    cos = torch.nn.functional.cosine_similarity(small, whole[:20].float(), dim=1)
    assert cos.min() > 0.9999


def test_int4_dequantising_falls_back_where_it_would_not_pay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The int4 kernel stays at any batch size for a layer whose rows are not whole blocks of
    torch's layout (48 rows: 64-row blocks on AVX-512), where the layout is not the known one,
    and where oneDNN's bf16 GEMMs are emulated (~100x slower than float32)."""
    from smysl.qwen3 import quantize

    monkeypatch.setattr(quantize, "DEQUANT_ROWS", 1)
    b = quantize._block_rows()
    assert b in (0, 32, 64)
    layer = _int4_layer("float", 48, 64, seed=9)
    x = torch.randn(30, 64).bfloat16()
    kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(x, layer.packed, quantize.GROUP,
                                                        layer.scale_zero)
    if not quantize.dequantises(48):
        assert torch.equal(layer(x), kernel)
    rule = quantize.dequantising.__wrapped__  # the cached rule, with injected answers
    monkeypatch.setattr(quantize, "_block_rows", lambda: 64)
    monkeypatch.setattr(quantize, "onednn_bf16", lambda: True)
    assert rule()
    monkeypatch.setattr(quantize, "onednn_bf16", lambda: False)
    assert not rule()
    monkeypatch.setattr(quantize, "onednn_bf16", lambda: True)
    monkeypatch.setattr(quantize, "_block_rows", lambda: 0)
    assert not rule()
    monkeypatch.setattr(quantize, "_block_rows", lambda: 64)
    monkeypatch.setattr(quantize, "dequantising", lambda: True)
    assert quantize.dequantises(128) and not quantize.dequantises(48)
    monkeypatch.setattr(quantize, "dequantising", lambda: False)
    assert not quantize.dequantises(128)


def test_int4_dequantising_in_threads_is_independent() -> None:
    """Two engines (an embedder and a reranker) multiplying at once take turns on the one
    workspace: neither sees the other's scratch."""
    from concurrent.futures import ThreadPoolExecutor

    from smysl.qwen3 import quantize

    if not quantize.dequantises(128):
        pytest.skip("no dequantised int4 regime here (bf16 emulated or unknown layout)")
    layers = [_int4_layer("Q4_K", 128, 256, seed=s) for s in (10, 11)]
    xs = [torch.randn(64, 256).bfloat16() for _ in layers]

    def run(i: int) -> list[torch.Tensor]:
        lay = layers[i]
        return [quantize.dequant_mm(xs[i], lay.packed, lay.scale_zero, 256) for _ in range(20)]

    alone = [run(0)[0], run(1)[0]]
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(run, [0, 1]))
    for i in (0, 1):
        assert all(torch.equal(y, alone[i]) for y in both[i])


def test_int4_dequantised_regime_in_and_outside_inference_mode(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The workspace made inside the engine's inference mode is reused by a plain call (and
    the other way round) without torch's "inplace update to inference tensor" error."""
    import threading

    from smysl.qwen3 import quantize

    if not quantize.dequantises(128):
        pytest.skip("no dequantised int4 regime here (bf16 emulated or unknown layout)")
    monkeypatch.setattr(quantize, "DEQUANT_ROWS", 16)
    layer, x = _int4_layer("Q4_K", 128, 256, seed=12), torch.randn(40, 256)
    got: list[torch.Tensor] = []

    def run() -> None:  # a fresh thread: a fresh workspace, first made in inference mode
        with torch.inference_mode():
            got.append(layer(x))
        got.append(layer(x))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(got) == 2 and torch.equal(got[0], got[1])


@pytest.mark.parametrize("kind", ["Q4_K", "Q8_0", "Q6_K", "float"])
def test_int4_gemm_layer_rebuilds_the_same_weights(kind: str) -> None:
    """CUDA's int4 layer (plain nibbles, device-agnostic torch ops; run here on CPU) holds the
    planes of the CPU layer and rebuilds exactly the weights the CPU's dequantised regime
    does, in row blocks or whole."""
    from smysl.qwen3 import quantize

    seed = {"Q4_K": 13, "Q8_0": 14, "Q6_K": 15, "float": 16}[kind]
    cpu_layer = _int4_layer(kind, 192, 256, seed=seed)
    if kind == "float":
        w = torch.randn(192, 256, generator=torch.Generator().manual_seed(seed)) * 0.02
        gemm = quantize.Int4GemmLinear.from_float(w, torch.device("cpu"))
    else:
        gemm = quantize.Int4GemmLinear.from_blocks(_matrix(kind, 192, 256, seed)[0],
                                                   torch.device("cpu"))
    assert gemm.planes == cpu_layer.planes
    assert gemm.codes.dtype == torch.uint8 and gemm.codes.shape == (192, gemm.planes * 128)
    whole = gemm.weight(0, 192)
    assert whole.dtype == torch.bfloat16 and whole.shape == (192, 256)
    assert torch.equal(torch.cat([gemm.weight(a, a + 50) for a in range(0, 192, 50)]), whole)
    if quantize.dequantises(192):
        eye = torch.eye(256, dtype=torch.bfloat16)
        rebuilt = quantize.dequant_mm(eye, cpu_layer.packed, cpu_layer.scale_zero, 256)
        assert torch.equal(rebuilt.t(), whole)
    x = torch.randn(40, 256)
    want = x.double() @ whole.double().t()
    got = gemm(x)
    assert got.dtype == torch.bfloat16 and ((got.double() - want).norm() / want.norm()) < 5e-3
    small = gemm.BLOCK
    try:
        gemm.BLOCK = 64 * 256 * gemm.planes  # 64 rows per block: 3 GEMMs
        assert ((gemm(x).double() - want).norm() / want.norm()) < 5e-3
    finally:
        gemm.BLOCK = small


def test_int4_layers_for_cuda_follow_the_source() -> None:
    """``quantize="int4"`` on CUDA: blocks and safetensors weights become Int4GemmLinear
    layers; a GGUF's float tensors and widths not in groups of 32 stay bf16 (dispatch checked
    with a CPU device: the layers are device-agnostic)."""
    from smysl.qwen3.model import Linear
    from smysl.qwen3.quantize import Int4GemmLinear, make_cuda

    cpu = torch.device("cpu")
    t, _ = _matrix("Q4_K", 64, 256, seed=17)
    w = torch.randn(64, 256) * 0.02
    assert isinstance(make_cuda(t, cpu, gguf=True), Int4GemmLinear)
    assert isinstance(make_cuda(w, cpu, gguf=False), Int4GemmLinear)
    for layer in (make_cuda(w, cpu, gguf=True), make_cuda(torch.randn(64, 80), cpu, gguf=False)):
        assert isinstance(layer, Linear) and layer.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q4_0", "Q4_1",
                                  "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"])
def test_lookups_run_where_the_blocks_are(kind: str) -> None:
    """An embedding table kept as blocks on the GPU decodes there: no decoder may mix in a
    constant made on the CPU (checked on the meta device, which rejects CPU operands as CUDA
    does)."""
    t, w = _matrix(kind, 8, 256, seed=20)
    on_meta = t.to(torch.device("meta"))
    got = on_meta.rows(torch.tensor([3, 0], device="meta"), torch.float32)
    assert got.device.type == "meta" and got.shape == (2, 256)
    assert torch.equal(t.to(torch.device("cpu")).rows(torch.tensor([3, 0]), torch.float32),
                       w[[3, 0]])


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX512"),
                    reason="needs a CPU whose torch dispatches AVX-512, to compare with AVX2")
def test_int4_layout_probe_on_an_avx2_dispatch() -> None:
    """torch packs int4 weights in 64-row blocks on AVX-512 and 32-row ones on AVX2: the probe
    finds each, and the rebuilt weights match the kernel's on both (the AVX2 one in a process
    whose torch is told to dispatch AVX2 kernels)."""
    import os
    import subprocess
    import sys

    code = """
import torch
from smysl.qwen3 import quantize
assert torch.backends.cpu.get_cpu_capability() == "AVX2"
b = quantize._block_rows()
layer = quantize.Int4Linear.from_float(torch.randn(128, 256) * 0.02)
eye = torch.eye(256, dtype=torch.bfloat16)
kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, layer.packed, 32, layer.scale_zero)
rebuilt = quantize._dequant_mm(eye, layer.packed, layer.scale_zero, 256)
assert (rebuilt.float() - kernel.float()).abs().le(kernel.float().abs() * 2**-8).all()
print(b)
"""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["32"]
    from smysl.qwen3 import quantize

    assert quantize._block_rows() == 64


@pytest.mark.parametrize("kind", ["Q5_0", "Q5_1", "Q4_0", "Q8_0", "Q6_K", "IQ4_NL"])
def test_one_block_alone_decodes(kind: str) -> None:
    """A single block (a one-block tensor, a chunk's last block, ``QuantTensor.rows`` of one
    row) decodes as it does among others: Q5_0's ``qh`` sits at byte 2, and a one-row slice
    there was viewed as int32 at an offset no multiple of 4 (a RuntimeError)."""
    from qwen_tiny import random_blocks

    qtype = getattr(gguf.GGMLQuantizationType, kind)
    per, width = gq.BLOCKS[int(qtype)]
    raw = random_blocks((3, per), qtype, np.random.default_rng(7)).reshape(3, width)
    together = gq.DEQUANTIZE[int(qtype)](torch.from_numpy(raw)).numpy()
    for i in range(3):
        alone = gq.DEQUANTIZE[int(qtype)](torch.from_numpy(raw)[i:i + 1]).numpy()
        assert np.array_equal(alone, together[i:i + 1])


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "Q4_0", "Q4_1",
                                  "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", *GRID])
def test_a_nan_or_inf_scale_is_found_where_it_spoils_the_block(kind: str) -> None:
    """A damaged file: a block's float16 scale (``d``, ``m`` or ``dmin``; IQ1_M's ``d`` is
    spread over its scales' top nibbles) that is NaN or +-inf is found (row, block in the
    row), and it is one that makes llama.cpp's reference dequantisation of that block
    non-finite; random bits elsewhere are not taken for one."""
    from qwen_tiny import random_blocks, set_iq1_m_scale

    qtype = getattr(gguf.GGMLQuantizationType, kind)
    per, width = gq.BLOCKS[int(qtype)]
    raw = random_blocks((6, 3 * per), qtype, np.random.default_rng(int(qtype)))  # 6 x 3 blocks
    assert gq.bad_block(torch.from_numpy(raw.reshape(6, -1)), int(qtype)) is None
    for at in gq.SCALES_AT.get(int(qtype), (None,)):
        for value in (np.inf, -np.inf, np.nan):
            bad = raw.reshape(-1, width).copy()
            if at is None:  # IQ1_M
                set_iq1_m_scale(bad[10:11], np.array([value]))
            else:
                bad[10, at : at + 2] = np.array([value], np.float16).view(np.uint8)
            assert gq.bad_block(torch.from_numpy(bad.reshape(6, -1)), int(qtype)) == (3, 1)
            with np.errstate(invalid="ignore", over="ignore"):
                values = gguf.quants.dequantize(bad, qtype).reshape(-1, per)
            assert not np.isfinite(values[10]).all() and np.isfinite(np.delete(values, 10, 0)).all()
