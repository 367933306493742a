"""CPU feature detection and the dtype ``auto`` picks from it (issue 13), on any machine: the
features are injected, so every branch runs whatever CPU the tests land on."""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smysl.qwen3.contract import EngineConfig
from smysl.qwen3.cpu import (
    CpuFeatures,
    apply_isa_cap,
    auto_dtype,
    detect,
    int8_activation_bits,
    int8_attention_dtype,
    int8_kernel,
    packs_linear,
    parse_cpuinfo,
)
from smysl.qwen3.engine import resolve_config, stored_dtype
from smysl.qwen3.model import PackedLinear, same_bit_rows
from smysl.qwen3.quantize import DynamicInt8Linear, Int8Linear

ZEN3 = CpuFeatures("AMD EPYC 7B13", "x86_64", frozenset({"sse4_2", "avx", "avx2", "fma"}))
ZEN5 = CpuFeatures("AMD EPYC", "x86_64", frozenset(
    {"avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "avx_vnni"}))
SPR = CpuFeatures("Intel Xeon Platinum 8480+", "x86_64", frozenset(
    {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8",
     "amx_tile"}))
GRAVITON3 = CpuFeatures("", "aarch64", frozenset({"asimd", "asimddp", "i8mm", "sve", "bf16"}))


def test_cpuinfo_is_parsed_on_x86_and_arm() -> None:
    x86 = parse_cpuinfo("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f "
                        "avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n", "x86_64")
    assert x86.model == "AMD EPYC"
    assert x86.names == ("avx2", "avx512f", "avx512_bf16", "avx512_vnni")
    assert x86.native_bf16 and x86.int8_dot
    arm = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve bf16\n", "aarch64")
    assert arm.names == ("asimd", "asimddp", "i8mm", "sve", "bf16")
    assert not arm.native_bf16 and arm.int8_dot  # Arm bf16 not measured here: fp32 stays
    assert "baseline only" in CpuFeatures("", "x86_64", frozenset({"sse2"})).describe()


@pytest.mark.parametrize(("cpu", "stored", "want"), [
    (ZEN3, torch.bfloat16, torch.float32),     # emulated bf16: ~100x slower
    (ZEN5, torch.bfloat16, torch.bfloat16),    # AVX512-BF16
    (SPR, torch.bfloat16, torch.bfloat16),     # AMX
    (GRAVITON3, torch.bfloat16, torch.float32),
    (ZEN5, torch.float32, torch.float32),      # an fp32 checkpoint keeps its precision
    (ZEN5, None, torch.float32),               # unknown storage: the exact path
])
def test_auto_dtype_on_each_cpu(cpu: CpuFeatures, stored: torch.dtype | None,
                                want: torch.dtype) -> None:
    dtype, why = auto_dtype(cpu, stored)
    assert dtype == want and why


@pytest.mark.parametrize(("cap", "left"), [
    ("AVX2", ("avx2",)),
    ("avx2_vnni", ("avx2", "avx_vnni")),                 # case-insensitive, as oneDNN
    ("AVX512_CORE", ("avx2", "avx512f")),
    ("AVX512_CORE_BF16", ("avx2", "avx512f", "avx512_bf16", "avx512_vnni")),
])
def test_an_isa_cap_hides_what_onednn_may_not_use(cap: str, left: tuple[str, ...]) -> None:
    capped = apply_isa_cap(SPR, {"ONEDNN_MAX_CPU_ISA": cap})
    assert capped.names == left
    assert cap in capped.capped and "amx_bf16" in capped.capped and capped.capped in (
        capped.describe())
    assert apply_isa_cap(SPR, {"DNNL_MAX_CPU_ISA": cap}).names == left  # the older name
    if "avx512_bf16" not in left:  # bf16 would be emulated: auto keeps float32, and says why
        dtype, why = auto_dtype(capped, torch.bfloat16)
        assert dtype == torch.float32 and cap in why
    assert int8_activation_bits(capped) == (8 if "vnni" in " ".join(left) else 7)


@pytest.mark.parametrize("env", [{}, {"ONEDNN_MAX_CPU_ISA": "ALL"},
                                 {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"},
                                 {"ONEDNN_MAX_CPU_ISA": "nonsense"}])
def test_no_cap_or_one_above_the_cpu_changes_nothing(env: dict[str, str]) -> None:
    assert apply_isa_cap(SPR, env) is SPR and apply_isa_cap(ZEN3, env) is ZEN3
    assert apply_isa_cap(GRAVITON3, {"ONEDNN_MAX_CPU_ISA": "AVX2"}) is GRAVITON3  # x86 only


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="oneDNN's ISA cap is x86's")
def test_a_process_started_with_an_isa_cap_keeps_to_it() -> None:
    """detect() reads the cap from the environment: under ONEDNN_MAX_CPU_ISA=AVX2 ``auto`` stays
    float32 on any CPU (oneDNN would emulate bf16 there: ~100x slower)."""
    code = """
import torch
from smysl.qwen3.cpu import auto_dtype, detect, onednn_bf16
f = detect()
assert not f.native_bf16 and not f.int8_dot and not onednn_bf16()
print(auto_dtype(f, torch.bfloat16)[0], f.capped or "-")
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "torch.float32"


def test_avx512_without_bf16_keeps_int4_and_attention_off_emulated_bf16() -> None:
    """oneDNN takes bf16 on any AVX-512 CPU, emulating it where AVX512-BF16 is missing
    (Skylake to Ice Lake, emulated here by a cap): int4 layers dequantised into emulated GEMMs
    there, 2.3x slower than torch's int4 kernel (1,640 vs 3,775 tok/s, 0.6B widths)."""
    if "avx512f" not in detect().flags:
        pytest.skip("needs an AVX-512 CPU")
    code = """
from smysl.qwen3.cpu import detect, onednn_bf16
from smysl.qwen3.quantize import dequantising
assert not detect().native_bf16 and not onednn_bf16() and not dequantising()
print(detect().key())
"""
    keys = set()
    for var, cap in (("ONEDNN_MAX_CPU_ISA", "AVX512_CORE"), ("ONEDNN_MAX_CPU_ISA", "avx512_core"),
                     ("DNNL_MAX_CPU_ISA", "Avx512_Core")):
        env = {k: v for k, v in os.environ.items() if "MAX_CPU_ISA" not in k}
        out = subprocess.run([sys.executable, "-c", code], env={**env, var: cap},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        keys.add(out.stdout.strip())
    # one machine, one tuning key, whichever spelling of the cap hid the same features
    (key,) = keys
    assert "avx512f" in key and "avx512_bf16" not in key


def test_engine_config_uses_the_features_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="smysl.qwen3.engine"):
        assert resolve_config(EngineConfig(device="cpu"), torch.bfloat16, ZEN5)[1] == torch.bfloat16
    assert "avx512_bf16" in caplog.text and "natively" in caplog.text
    assert resolve_config(EngineConfig(device="cpu"), torch.bfloat16, ZEN3)[1] == torch.float32
    # explicit choices win; int8 keeps its float32 activations
    assert resolve_config(EngineConfig(device="cpu", dtype="float32"), torch.bfloat16, ZEN5)[1] \
        == torch.float32
    assert resolve_config(EngineConfig(device="cpu", quantize="int8"), torch.bfloat16, ZEN5)[1] \
        == torch.float32
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="smysl.qwen3.engine"):
        resolve_config(EngineConfig(device="cpu", dtype="bfloat16"), torch.bfloat16, ZEN5)
        assert "emulated" not in caplog.text
        resolve_config(EngineConfig(device="cpu", dtype="bfloat16"), torch.bfloat16, ZEN3)
        assert "emulated" in caplog.text and "AMD EPYC 7B13" in caplog.text


def test_stored_dtype_reads_both_config_keys() -> None:
    assert stored_dtype({"torch_dtype": "bfloat16"}) == torch.bfloat16  # transformers 4
    assert stored_dtype({"dtype": "float32"}) == torch.float32          # transformers 5
    assert stored_dtype({}) is None


def test_auto_on_this_machine_matches_fp32(tiny_variants, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A bf16 checkpoint with ``auto`` on this CPU: the path the features pick, reported in
    info(), and vectors within cosine 0.9999 of the exact fp32 path."""
    from smysl import Embedder

    t = tiny_variants["gqa2-untied-eos-bf16"]
    auto = Embedder.load(str(t.path), device="cpu")
    exact = Embedder.load(str(t.path), device="cpu", dtype="float32")
    want, _ = auto_dtype(detect(), torch.bfloat16)
    info = auto.info()
    assert info.dtype == str(want).removeprefix("torch.")
    assert info.cpu == detect().describe()
    texts = ["Кошка спит на подоконнике.", "The cat sleeps on the windowsill.", "x" * 300]
    cos = (auto.embed_documents(texts) * exact.embed_documents(texts)).sum(1)
    assert np.all(cos >= 0.9999), cos


def test_info_route_names_the_cpu(tiny) -> None:  # type: ignore[no-untyped-def]
    """`/info` says which CPU and features chose the compute path (issue 13)."""
    from fastapi.testclient import TestClient

    from smysl.server import create_app

    with TestClient(create_app(tiny)) as client:
        body = client.get("/info").json()
    assert body["cpu"] == detect().describe() and body["model_dtype"] == "float32"
    assert body["kernel"] == ("onednn" if packs_linear(torch.float32) else "torch")


def test_bf16_path_is_batch_invariant(tiny_variants) -> None:  # type: ignore[no-untyped-def]
    """The bf16 CPU path keeps the fp32 path's rule: a text's vector does not depend on the
    batch it came in (same thread count), bit for bit."""
    from smysl import Embedder

    emb = Embedder.load(str(tiny_variants["gqa2-untied-eos-bf16"].path), device="cpu",
                        dtype="bfloat16")
    texts = ["short", "a somewhat longer text about cats and dogs", "Кошка спит." * 20,
             "another one", "x"]
    together = emb.embed_documents(texts)
    alone = np.vstack([emb.embed_documents([t]) for t in texts])
    reversed_ = emb.embed_documents(texts[::-1])[::-1]
    assert np.array_equal(together, alone) and np.array_equal(together, reversed_)


@pytest.mark.parametrize("shape", [(96, 64), (1024, 2048), (1024, 3072), (4096, 1024)])
def test_packed_linear_is_exact_and_row_independent(shape: tuple[int, int]) -> None:
    """The oneDNN layer the CPU engine runs where it can: bf16 bit-identical to ``F.linear``
    where oneDNN's kernels agree at every row count (else within bf16 rounding of it), float32
    within float32 rounding of it; a row's result never depends on the other rows (1 row
    alone, 2, 5, 16, 17, 40, 100, 200, 256, 257, 300), at a tiny shape and the 0.6B's o_proj,
    down_proj and qkv_proj shapes (float32 summed a lone row in another order at the first
    two until fewer than 16 rows were padded; bf16 with AMX gave 16-32, 48-144 and 192-256
    rows three summation orders at down_proj until rows were padded within one)."""
    out_f, in_f = shape
    for dtype in (torch.float32, torch.bfloat16):
        if not packs_linear(dtype):
            continue
        torch.manual_seed(0)
        w = (torch.randn(out_f, in_f) * 0.1).to(dtype)
        x = torch.randn(300, in_f).to(dtype)
        layer = PackedLinear(w)
        full = layer(x)
        ref = torch.nn.functional.linear(x, w)
        if dtype == torch.bfloat16 and same_bit_rows(layer) is None:
            assert torch.equal(full, ref)
        elif dtype == torch.bfloat16:
            assert torch.allclose(full.float(), ref.float(), atol=0.1, rtol=1e-2)
        else:
            assert torch.allclose(full, ref, atol=1e-4, rtol=1e-5)
        for m in (1, 2, 5, 16, 17, 40, 100, 200, 256, 257):
            assert torch.equal(layer(x[:m]), full[:m]), (dtype, m)
            assert torch.equal(layer(x[-m:]), full[-m:]), (dtype, m)
        assert layer(x.float()).dtype == dtype  # inputs are cast to the weight's dtype


def test_kernel_checks_do_not_depend_on_the_weights_values() -> None:
    """oneDNN picks its kernel by shape; a weight's values could hide the change. A dequantised
    GGUF weight (few significant bits: sums exact in either order) passed 16 rows at the 0.6B's
    down_proj on a Xeon with AMX, and a Q8_0 file's texts alone differed from the same in a
    batch by 2.8e-3. An all-zero weight hides everything: the checks must see what a random
    weight of the shape shows (on CPUs whose kernels never change, both say so)."""
    from smysl.qwen3 import model as model_mod

    if not packs_linear(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bf16 here")
    shape = (1024, 3072)
    zero = PackedLinear(torch.zeros(shape, dtype=torch.bfloat16))
    rand = PackedLinear(torch.randn(shape, dtype=torch.bfloat16))
    model_mod._SAME_BITS.clear()
    of_zero = same_bit_rows(zero)
    model_mod._SAME_BITS.clear()
    assert of_zero == same_bit_rows(rand)
    threads = (torch.get_num_threads(), 1)
    assert model_mod.same_bits_on(torch.nn.Sequential(zero), threads) == \
        model_mod.same_bits_on(torch.nn.Sequential(rand), threads)


def test_memory_stays_flat_whatever_the_row_counts() -> None:
    """oneDNN keeps a kernel, and memory, for each row count it meets: the 0.6B's o_proj and
    down_proj fed every count from 16 to 256 once grew RSS by 339 MiB (a server with mixed
    request lengths kept growing). Row counts are padded to a short list of sizes now: a
    multiple of ROW_STEP up to 256, 16 sizes per doubling above, <= 6.25% of padding."""
    from smysl.qwen3.model import ROW_STEP, padded_rows

    assert {padded_rows(m) for m in range(1, 257)} == set(range(16, 257, ROW_STEP))
    assert all(m <= padded_rows(m) < max(m + ROW_STEP, 17) for m in range(1, 257))
    assert all(m <= padded_rows(m) <= m * 1.0625 for m in range(257, 40_000))
    assert len({padded_rows(m) for m in range(1, 4097)}) == 80
    assert len({padded_rows(m) for m in range(1, 32_769)}) == 128

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    shapes = [(1024, 2048), (1024, 3072)]
    torch.manual_seed(0)
    layers = [PackedLinear(torch.randn(o, i)) for o, i in shapes]
    xs = [torch.randn(256, i) for _, i in shapes]
    with torch.inference_mode():
        full = [layer(x) for layer, x in zip(layers, xs, strict=True)]
        before = rss()
        for m in range(16, 257):
            for layer, x, y in zip(layers, xs, full, strict=True):
                assert torch.equal(layer(x[:m]), y[:m])
        grown = rss() - before
    assert grown < 100, f"RSS grew {grown:.0f} MiB"


def test_packs_linear_only_where_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 (no native fp16 GEMM path measured) never packs; neither does Arm (oneDNN there
    is ACL, unmeasured)."""
    assert not packs_linear(torch.float16)
    monkeypatch.setattr("smysl.qwen3.cpu.platform.machine", lambda: "aarch64")
    assert not packs_linear.__wrapped__(torch.float32)


def test_engine_reports_its_linear_kernel(tiny_variants) -> None:  # type: ignore[no-untyped-def]
    """info() says what the linear layers run: oneDNN where it packs this dtype, the int8
    kernel :func:`int8_kernel` picks for int8; the float path's vectors stay at the exact
    path's parity (checked in test_engine)."""
    from smysl import Embedder

    path = str(tiny_variants["gqa2-untied-eos-bf16"].path)
    for dtype in ("float32", "bfloat16"):
        if dtype == "bfloat16" and not detect().native_bf16:
            continue
        info = Embedder.load(path, device="cpu", dtype=dtype).info()
        want = "onednn" if packs_linear(getattr(torch, dtype)) else "torch"
        assert info.kernel == want, (dtype, info.kernel)
    int8 = Embedder.load(path, device="cpu", quantize="int8")
    assert int8.info().kernel == int8_kernel(detect())
    layer = int8.engine.model.layers[0].mlp.down_proj  # type: ignore[attr-defined]
    want_type = Int8Linear if int8_kernel(detect()) == "onednn-int8" else DynamicInt8Linear
    assert type(layer) is want_type


def test_int8_kernel_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN's per-row int8 on x86 where torch has the op, 8-bit codes with int8 dot products
    (VNNI / AMX) and 7-bit ones without (AVX2); fbgemm's per-tensor layer where the op is
    missing, torch's default quantised engine off x86."""
    monkeypatch.setattr("smysl.qwen3.cpu.onednn_int8", lambda: True)
    assert int8_kernel(ZEN5) == int8_kernel(SPR) == int8_kernel(ZEN3) == "onednn-int8"
    assert int8_activation_bits(ZEN5) == int8_activation_bits(SPR) == 8
    assert int8_activation_bits(ZEN3) == 7
    assert int8_kernel(GRAVITON3) == "torch-int8"
    monkeypatch.setattr("smysl.qwen3.cpu.onednn_int8", lambda: False)
    assert int8_kernel(ZEN5) == int8_kernel(ZEN3) == "fbgemm-int8"


def test_int8_attends_in_bf16_only_where_native(tiny_variants) -> None:  # type: ignore[no-untyped-def]
    """The int8 path's attention: bf16 GEMMs on a bf16-native CPU, float32 elsewhere; its
    vectors stay within int8's bound of fp32 either way."""
    from smysl import Embedder

    assert int8_attention_dtype(ZEN3) == torch.float32
    assert int8_attention_dtype(ZEN5) == torch.bfloat16
    path = str(tiny_variants["gqa2-untied-eos-bf16"].path)
    int8 = Embedder.load(path, device="cpu", quantize="int8")
    assert int8.engine.model.attn_dtype == int8_attention_dtype(detect())  # type: ignore[attr-defined]
    texts = ["Кошка спит на подоконнике.", "The cat sleeps on the windowsill.", "x" * 300]
    fp32 = Embedder.load(path, device="cpu", dtype="float32")
    exact = fp32.embed_documents(texts)
    assert ((int8.embed_documents(texts) * exact).sum(1) >= 0.99).all()
    # q/k norm + RoPE: the reference's order on the exact path only (model.norm_rope elsewhere)
    assert fp32.engine.model.exact_qk and not int8.engine.model.exact_qk  # type: ignore[attr-defined]


@pytest.mark.parametrize("device", ["foo", "cuda:x"])
def test_a_device_torch_cannot_parse_is_a_clear_error(device: str) -> None:
    """torch's RuntimeError came out as a traceback (exit 1)."""
    with pytest.raises(ValueError, match=rf"unknown device '{re.escape(device)}' \(use auto"):
        resolve_config(EngineConfig(device=device))


def test_aten_level_set_by_hand_keys_measurements_apart() -> None:
    # ATEN_CPU_CAPABILITY=avx2 alone left the key as uncapped while the int4 kernel ran at
    # 109 GFLOP/s instead of 165: a stored slice size or dequant threshold was reused
    from dataclasses import replace

    assert ZEN5.key() == ZEN5.describe()  # uncapped: entries stored before still found
    capped = replace(ZEN5, aten="avx2")
    assert capped.key() != ZEN5.key() and "ATen avx2" in capped.key()
    assert "ATen avx2" in capped.describe()
