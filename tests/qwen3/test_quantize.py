"""The int8 layers (issue 13): oneDNN's per-row layer against float (8- and 7-bit activation
codes), its row invariance and its handling of non-finite rows; the per-tensor fbgemm layer it
replaces on x86."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from smysl.qwen3.cpu import onednn_int8
from smysl.qwen3.quantize import DynamicInt8Linear, Int8Linear, int8_linear

needs_onednn = pytest.mark.skipif(not onednn_int8(), reason="torch has no oneDNN int8 linear here")


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(96, 64) * 0.05


def test_constructor_follows_the_kernel() -> None:
    assert int8_linear("onednn-int8") is Int8Linear
    assert int8_linear("fbgemm-int8") is int8_linear("torch-int8") is DynamicInt8Linear


def test_non_finite_weight_is_an_error(weight: torch.Tensor) -> None:
    """int8 codes of a NaN/inf weight would be finite garbage: loading says so instead."""
    w = weight.clone()
    w[70, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        Int8Linear(w) if onednn_int8() else int8_linear("torch-int8")(w)


@needs_onednn
def test_int8_close_to_float_and_no_worse_than_per_tensor(weight: torch.Tensor) -> None:
    # one row 30x louder than the rest: a per-tensor scale coarsens every other row
    x = torch.randn(40, 64)
    x[3] *= 30
    ref = x @ weight.t()
    y = Int8Linear(weight)(x)
    assert y.dtype == torch.float32 and y.shape == (40, 96)
    quiet = torch.arange(40) != 3
    err, err_tensor = rel_err(y[quiet], ref[quiet]), rel_err(
        DynamicInt8Linear(weight)(x)[quiet], ref[quiet])
    assert err < 0.02 and err < err_tensor / 3, (err, err_tensor)
    # bf16 activations (the attention output) are quantised in float32: same codes
    xb = x.to(torch.bfloat16)
    assert torch.equal(Int8Linear(weight)(xb), Int8Linear(weight)(xb.float()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_is_left_as_it_was(weight: torch.Tensor, dtype: torch.dtype) -> None:
    """Quantising reads the float weight (the loader's or a model's parameter), never edits it."""
    w = weight.to(dtype)
    before = w.clone()
    for kernel in ("onednn-int8", "fbgemm-int8") if onednn_int8() else ("fbgemm-int8",):
        int8_linear(kernel)(w)
        assert torch.equal(w, before), kernel


@needs_onednn
def test_int8_row_result_does_not_depend_on_the_batch(weight: torch.Tensor) -> None:
    layer = Int8Linear(weight)
    x = torch.randn(300, 64)
    full = layer(x)
    for rows in (slice(0, 1), slice(17, 18), slice(5, 40), slice(299, 300), slice(0, 15)):
        assert torch.equal(layer(x[rows]), full[rows])


@needs_onednn
def test_int8_non_finite_rows_stay_non_finite(weight: torch.Tensor) -> None:
    """A NaN or inf in a row must not come out as a finite (wrong) vector, nor touch other
    rows; an all-zero row gives zeros."""
    layer = Int8Linear(weight)
    x = torch.randn(5, 64)
    x[1, 7], x[2, 0], x[4] = float("nan"), float("inf"), 0.0
    y, clean = layer(x), layer(x[[0, 3]])
    assert not torch.isfinite(y[1]).any() and not torch.isfinite(y[2]).any()
    assert torch.equal(y[[0, 3]], clean) and torch.equal(y[4], torch.zeros(96))


@needs_onednn
def test_int8_empty_and_strided_inputs(weight: torch.Tensor) -> None:
    layer = Int8Linear(weight)
    assert layer(torch.randn(0, 64)).shape == (0, 96)
    x = torch.randn(64, 9).t()  # [9, 64], not contiguous
    assert torch.equal(layer(x), layer(x.contiguous()))


@needs_onednn
def test_seven_bit_codes_are_close_and_batch_invariant(weight: torch.Tensor) -> None:
    """The layer of CPUs without int8 dot products (7-bit activation codes, q + 64 as u8)."""
    layer = Int8Linear(weight, act_bits=7)
    assert (layer.qmax, layer.zero) == (63.0, 64)
    x = torch.randn(300, 64)
    full = layer(x)
    assert rel_err(full, x @ weight.t()) < 0.03
    for rows in (slice(0, 1), slice(5, 40), slice(299, 300)):
        assert torch.equal(layer(x[rows]), full[rows])
    with pytest.raises(ValueError, match="7 or 8 bits"):
        Int8Linear(weight, act_bits=6)


@needs_onednn
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="oneDNN's ISA cap is x86's")
@pytest.mark.parametrize("cap", ["AVX2", "SSE41"])
def test_seven_bit_sums_are_exact_where_pairs_saturate(cap: str) -> None:
    """With oneDNN capped at AVX2 or SSE4.1 (a pre-2013 x86; no VNNI: u8 x s8 pairs summed
    into saturating 16 bits by ``pmaddubsw``), an adversarial row (large codes against large
    weights, side by side) gives the exact integer sums with 7-bit codes: 127 * 127 * 2 <=
    32,767. The same row with 8-bit codes (up to 255)
    is the control: it must come out wrong, or no saturating kernel ran here."""
    code = """
import torch
from smysl.qwen3.quantize import Int8Linear, _weight_codes
torch.manual_seed(0)
w = torch.randn(64, 256) * 0.02
w[:, :16] = 0.05  # large weights side by side (codes ~100-127: a row's maximum sets 127)
x = torch.randn(4, 256)
x[:, :16] = 4.0   # and each row's largest activations
codes, scales = _weight_codes(w)
amax = x.abs().amax(1, keepdim=True)
for bits in (7, 8):
    layer = Int8Linear(w, act_bits=bits)
    q = torch.round(x * (layer.qmax / amax))
    exact = (q.double() @ codes.double().T) * scales.double() * (amax.double() / layer.qmax)
    ok = ((layer(x).double() - exact).abs() <= exact.abs() * 1e-6 + 1e-6).all()
    print(bits, "exact" if ok else "wrong")
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = dict(line.split() for line in out.stdout.splitlines())
    if got["8"] == "exact":
        pytest.skip(f"8-bit codes did not saturate: oneDNN ran no {cap} pair-sum kernel here")
    assert got["7"] == "exact"
