"""What this CPU computes natively, and the dtype ``dtype="auto"`` picks from it.

Machines differ by two orders of magnitude here: on an AVX2-only CPU a bf16 matmul is emulated
(~100x slower than fp32), on one with AVX512-BF16 or AMX it runs 4-5x faster than fp32. So the
choice is made from the features the CPU reports, once, logged with its reason, and shown in
``/info`` and the benchmark output. Tests inject :class:`CpuFeatures` to cover every branch on
any machine.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

#: Features that decide a path, by architecture, in the order they are reported.
#: x86: AVX2 / AVX-512 (fp32 GEMM), AVX512-BF16 and AMX-BF16 (native bf16), AVX512-VNNI,
#: AVX-VNNI and AMX-INT8 (int8 dot products). Arm: asimddp (dot product), i8mm, sve, bf16.
KNOWN = {
    "x86_64": ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni",
               "amx_int8", "amx_tile"),
    "aarch64": ("asimd", "asimddp", "i8mm", "sve", "sve2", "bf16"),
}
#: Matmul precision ``dtype="auto"`` may pick on CPU: bf16 stays within cosine 0.99996 of fp32 on
#: the benchmark corpus (0.6B shape, docs/benchmarks.md), inside the 0.9999 the choice allows.
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})
#: oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``): the :data:`KNOWN`
#: x86 features each level still lets it use. oneDNN runs every bf16 and int8 GEMM of the CPU
#: engine, so a capped feature is one smysl cannot use either: on an AVX512-BF16 CPU capped at
#: AVX2, a bf16 GEMM is emulated (~100x slower than float32). Levels not listed (and ``ALL``)
#: cap nothing that decides a path.
_ISA_CAPS: dict[str, frozenset[str]] = {
    "SSE41": frozenset(), "AVX": frozenset(), "AVX2": frozenset({"avx2"}),
    "AVX2_VNNI": frozenset({"avx2", "avx_vnni"}), "AVX2_VNNI_2": frozenset({"avx2", "avx_vnni"}),
    "AVX512_CORE": frozenset({"avx2", "avx512f"}),
    "AVX512_CORE_VNNI": frozenset({"avx2", "avx512f", "avx512_vnni"}),
    "AVX512_CORE_BF16": frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}),
}
# AVX10.1 includes the VEX-encoded VNNI (AVX-VNNI) as well
_ISA_CAPS["AVX512_CORE_FP16"] = _ISA_CAPS["AVX10_1_512"] = _ISA_CAPS["AVX512_CORE_BF16"] | {
    "avx_vnni"}


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name, architecture and the :data:`KNOWN` features it has."""

    model: str
    arch: str
    flags: frozenset[str]
    #: What an ISA cap hides from :attr:`flags` (see :func:`apply_isa_cap`), "" when none.
    capped: str = ""
    #: ATen's vector level where ``ATEN_CPU_CAPABILITY`` set one ("avx2"), else "": it moves
    #: the int4 kernel's speed (165 -> 109 GFLOP/s capped at avx2 on an EPYC Zen 5).
    aten: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Known features present, in :data:`KNOWN` order (for logs and ``/info``)."""
        return tuple(f for f in KNOWN.get(self.arch, ()) if f in self.flags)

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls run in hardware (x86 AVX512-BF16 or AMX). Arm's bf16 extension is not
        counted: no Arm machine has measured it against fp32 here yet."""
        return bool(self.flags & NATIVE_BF16)

    @property
    def int8_dot(self) -> bool:
        """int8 dot-product instructions (VNNI / AMX-INT8 / Arm dot product or I8MM)."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})

    def describe(self) -> str:
        """``AMD EPYC (avx2, avx512f, avx512_bf16, ...)`` for logs and benchmark output, with
        any cap set in the environment."""
        return self._text(self.capped)

    def key(self) -> str:
        """What measurements on this CPU are keyed by: the model and the features in use,
        whichever spelling of a cap hid the others (``avx2``, ``AVX2``, ``DNNL_MAX_CPU_ISA``
        made four keys of one machine), and ATen's level where one was set. Uncapped, the
        same text as :meth:`describe`."""
        return self._text("")

    def _text(self, cap: str) -> str:
        extra = (f"; {cap}" if cap else "") + (f"; ATen {self.aten}" if self.aten else "")
        return f"{self.model or self.arch} ({', '.join(self.names) or 'baseline only'}{extra})"


def parse_cpuinfo(text: str, arch: str) -> CpuFeatures:
    """Features from ``/proc/cpuinfo`` text (the first processor's ``flags`` / ``Features``)."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuFeatures(model, arch, flags)


def apply_isa_cap(features: CpuFeatures, env: Mapping[str, str]) -> CpuFeatures:
    """``features`` less what oneDNN's ISA cap in ``env`` forbids it to use (x86 only): the
    features smysl's choices may count on. The cap is named in :attr:`CpuFeatures.capped`."""
    var = next((v for v in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") if env.get(v)), "")
    name = env.get(var, "")
    allowed = _ISA_CAPS.get(name.upper())  # oneDNN reads it case-insensitively, untrimmed
    if features.arch != "x86_64" or allowed is None:
        return features
    hidden = features.flags & (frozenset(KNOWN["x86_64"]) - allowed)
    if not hidden:
        return features
    names = ", ".join(f for f in KNOWN["x86_64"] if f in hidden)
    return replace(features, flags=features.flags - hidden,
                   capped=f"{var}={name} hides {names}")


@functools.cache
def detect() -> CpuFeatures:
    """This machine's features (read once), less those an ISA cap set in the environment
    forbids (:func:`apply_isa_cap`). Empty flags where ``/proc/cpuinfo`` is absent (macOS,
    Windows): ``auto`` then stays float32, the exact path."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                        platform.machine().lower())
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuFeatures(platform.processor(), arch, frozenset())
    features = apply_isa_cap(parse_cpuinfo(text, arch), os.environ)
    if os.environ.get("ATEN_CPU_CAPABILITY"):  # the level ATen took (it ignores a misspelt one)
        features = replace(features, aten=torch.backends.cpu.get_cpu_capability().lower())
    return features


def auto_dtype(features: CpuFeatures, stored: torch.dtype | None) -> tuple[torch.dtype, str]:
    """``dtype="auto"`` on CPU: (matmul dtype, why).

    bf16 where the CPU computes it natively and the checkpoint is stored in bf16 (every
    Qwen3-Embedding release is): 2.5-4.5x faster than fp32, cosine >= 0.9999 to it. A checkpoint
    stored in fp32 keeps fp32 (its owner chose that precision), and so does every CPU that would
    emulate bf16. ``dtype="float32"`` is always the exact path.
    """
    if stored is not torch.bfloat16:
        return torch.float32, f"the checkpoint is stored in {_name(stored)}"
    if not features.native_bf16:
        cap = f" usable ({features.capped})" if features.capped else ""
        return torch.float32, f"this CPU has no native bf16 (AVX512-BF16 or AMX-BF16){cap}"
    have = sorted(features.flags & NATIVE_BF16)
    return torch.bfloat16, f"this CPU computes bf16 natively ({', '.join(have)})"


def int8_kernel(features: CpuFeatures) -> str:
    """What ``quantize="int8"`` multiplies with (see :mod:`smysl.qwen3.quantize`):
    ``onednn-int8`` (activations quantised per row: batch invariant) on x86 where this torch's
    oneDNN has the op, with :func:`int8_activation_bits` codes; ``fbgemm-int8`` (per-tensor
    activations) on x86 without it; ``torch-int8`` (the same per-tensor layer on torch's
    default quantised engine, e.g. qnnpack) off x86, unmeasured.

    Measured on an AVX-512-VNNI EPYC: oneDNN 1.05-1.07x fbgemm, min cosine to fp32 0.9983 vs
    0.9972. With every library capped at AVX2 there (an AVX2-only CPU's kernels): oneDNN with
    7-bit codes 19.2 s vs fbgemm 18.8-19.3 s on the benchmark corpus, min cosine 0.9964 vs
    0.9943 (fbgemm's 16-bit pair sums saturate there, oneDNN's 7-bit codes cannot)."""
    if features.arch != "x86_64":
        return "torch-int8"
    return "onednn-int8" if onednn_int8() else "fbgemm-int8"


def int8_activation_bits(features: CpuFeatures) -> int:
    """Bits of the per-row activation codes of ``onednn-int8``: 8 where the CPU has int8 dot
    products (VNNI / AMX-INT8: u8 x s8 products accumulate straight into int32), 7 elsewhere.
    Without them (AVX2) each pair of u8 x s8 products is summed into a saturating 16 bits:
    codes ``q + 128`` up to 255 times weights up to 127 overflow (an error of 1.7e5 seen on an
    adversarial row), while 7-bit codes ``q + 64 <= 127`` keep every pair <= 32,258: exact
    integer sums, at the same min cosine to fp32 there (0.9964). On VNNI machines 8 bits are
    closer (0.9983 vs 0.9966)."""
    return 8 if features.int8_dot else 7


@functools.cache
def onednn_int8() -> bool:
    """Whether this torch has oneDNN's quantised linear op (u8 activations x s8 weights) and it
    multiplies correctly here (checked once on a small exact case)."""
    try:
        w = torch.tensor([[1, -2, 3, 0], [4, 5, -6, 7]], dtype=torch.int8)
        x = torch.tensor([[129, 127, 130, 128]], dtype=torch.uint8)  # codes 1, -1, 2, 0
        packed = torch.ops.onednn.qlinear_prepack(w, None)
        y = torch.ops.onednn.qlinear_pointwise(x, 1.0, 128, packed, torch.ones(2),
                                               torch.zeros(2, dtype=torch.long), None, 1.0, 0,
                                               torch.float32, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.equal(y, torch.tensor([[9.0, -13.0]])))


def int8_attention_dtype(features: CpuFeatures) -> torch.dtype:
    """The dtype the int8 path (float32 activations into the int8 layers) attends in: bf16
    where the CPU computes it natively, as blocked GEMMs ~3x torch's float32 flash kernel (29%
    of the int8 path's time on an AVX512-BF16 EPYC, 0.6B shape); float32 elsewhere. Far inside
    int8's own error (cosine >= 0.99 to fp32)."""
    return torch.bfloat16 if features.native_bf16 else torch.float32


@functools.cache
def onednn_bf16() -> bool:
    """Whether torch's oneDNN computes bf16 GEMMs natively on this machine (AVX512-BF16 or AMX,
    and not capped by ``ONEDNN_MAX_CPU_ISA``); where not, bf16 GEMMs are emulated (an EPYC
    capped at AVX512_CORE: 76 GFLOP/s against fp32's 220; bf16 batched matmuls at AVX2 ~100x
    slower than fp32). oneDNN's own answer only says it takes bf16, which it emulates on
    any AVX-512 CPU (Skylake to Ice Lake): int4 layers then dequantised into emulated GEMMs,
    2.3x slower than torch's int4 kernel."""
    features = detect()
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                and (features.arch != "x86_64" or features.native_bf16))


@functools.cache
def amx_bf16() -> bool:
    """Whether oneDNN may use AMX-BF16 here (not hidden by an ISA cap) for bf16 GEMMs. Then
    torch's CPU flash-attention kernel packs its bf16 blocks for oneDNN's AMX GEMMs (torch
    decides that from the same oneDNN answer): 2x bf16 attention as batched GEMMs, which it
    is not on AVX512-BF16 alone (there it computes at its float32 rate: see
    ``model.causal_attention``)."""
    return onednn_bf16() and "amx_bf16" in detect().flags


@functools.cache
def packs_linear(dtype: torch.dtype) -> bool:
    """Whether linear layers in ``dtype`` run as :class:`~smysl.qwen3.model.PackedLinear`
    (weights reordered once into oneDNN's blocked layout) on this machine.

    float32 and bfloat16 on x86-64 where torch's oneDNN can pack them (checked once on a small
    weight). bf16 ``F.linear`` already runs oneDNN but reorders the weight on every call:
    packed is bit-identical and 1.15x faster at 1,024 rows, 2-3x at 16. float32 ``F.linear``
    runs MKL, which on AMD EPYC Zen 5 (AVX-512) reached 200 GFLOP/s against oneDNN's 490, with
    the same fp32 accuracy (summation order differs: 2e-6 vs 1e-6 max error on a 1,024-deep
    GEMM; embeddings 2.4e-7 apart). Not on Arm: oneDNN there is ACL, unmeasured here."""
    if dtype not in (torch.float32, torch.bfloat16) or platform.machine().lower() not in (
            "x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not onednn_bf16():
        return False
    try:
        w, x = torch.randn(32, 64).to(dtype), torch.randn(3, 64).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.allclose(y.float(), torch.nn.functional.linear(x, w).float(),
                               atol=1e-2, rtol=1e-2))


def _name(dtype: torch.dtype | None) -> str:
    return "an unknown dtype" if dtype is None else str(dtype).removeprefix("torch.")


def available_memory() -> int | None:
    """Bytes this process can still take: ``MemAvailable``, capped by the cgroup (v2) limit
    of a container; None where neither is readable (not Linux)."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cg / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None
