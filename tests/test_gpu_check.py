"""The GPU run is one call of ``benchmarks/gpu_check.py`` on a lent device: its plumbing is
checked here first, on the CPU (``--dry-run``: tiny shapes, every section; ~6 minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_section_dry(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out",
                        str(tmp_path), "--work", str(tmp_path / "work")], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    # a section that fails logs its traceback and the run goes on: here none may
    assert not res.get("failed") and not res.get("skipped"), r.stdout[-6000:]
    assert not res["preflight"]["missing"]
    for size in ("0.6b", "8b", "4b"):
        row = res[f"shape_{size}"]
        assert row["smysl_first"]["tok_s"] > 0 and row["finite"]
    causes = res["shape_0.6b"]["first_pass_causes"]  # three fresh processes, one profiled
    assert len(causes) == 3 and all(r["first_s"] > 0 and r["warm_s"] > 0 for r in causes.values())
    assert sum("first_api" in r for r in causes.values()) == 1
    assert "long32k_float16" in res["shape_8b"]
    servers = [k for k in res if k.startswith("server_0.6b")]
    assert len(servers) == 4
    for k in servers:  # every text came back, equal to the in-process vector
        assert res[k]["min_cos_vs_in_process"] > 0.999 and res[k]["http_texts_s"] > 0
        assert res[k]["long_texts_s"] > 0
        # each load process's share of a core: what tells a client-bound measure
        assert len(res[k]["client_cpu"]) == 4 and all(0 < x < 2 for x in res[k]["client_cpu"])


def test_the_cuda_helpers_call_cuda_once() -> None:
    """The helpers' CUDA branch, which a dry run never takes (each once called itself). In a
    subprocess: the script puts benchmarks/ on sys.path and sets torch's TF32 flags."""
    code = """
import sys, torch
sys.path.insert(0, "benchmarks")
import gpu_check
calls = []
for name, value in (("synchronize", None), ("reset_peak_memory_stats", None),
                    ("max_memory_allocated", 3 * 2**30), ("memory_allocated", 2**30),
                    ("empty_cache", None)):
    setattr(torch.cuda, name, lambda *a, name=name, value=value, **k: calls.append(name) or value)
gpu_check.DEV = "cuda"
gpu_check.reset_peak()
assert gpu_check.peak_gib() == 3.0 and gpu_check.allocated_gib() == 1.0
assert gpu_check.timed(lambda x: x + 1, 1)[0] == 2
gpu_check.free()
assert calls == ["reset_peak_memory_stats", "max_memory_allocated", "memory_allocated",
                 "synchronize", "synchronize", "empty_cache"], calls
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_a_cut_off_run_keeps_what_it_measured(tmp_path: Path) -> None:
    """The device run is one call under ``timeout``: past ``--deadline`` the optional steps
    are skipped, and a SIGTERM still leaves gpu.json with every section finished so far."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "benchmarks/gpu_check.py", "--dry-run",
                             "--deadline", "0", "--out", str(tmp_path), "--work",
                             str(tmp_path / "work")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = tmp_path / "gpu.json"
    try:
        deadline = time.monotonic() + 900
        while not (out.is_file() and "0.6b eager passes" in out.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        res = json.loads(out.read_text())  # rewritten after each section and step
        assert res["shape_0.6b"]["smysl_first"]["tok_s"] > 0
        # past the deadline: the optional steps said so instead of running
        assert {"0.6b profile", "0.6b eager passes"} <= set(res["skipped"])
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, text[-3000:]
    res = json.loads(out.read_text())
    assert "shape_0.6b" in res and res["elapsed_s"] > 0 and "total" in text


def test_api_calls_sums_cuda_calls_and_names_the_long_ones_by_op() -> None:
    """The profiled first pass's summary (a dry run has no CUDA calls to show it)."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    def event(name: str, us: float, parent: str | None, device: str = "CPU") -> object:
        return SimpleNamespace(name=name, device_type=SimpleNamespace(name=device),
                               time_range=SimpleNamespace(elapsed_us=lambda: us),
                               cpu_parent=SimpleNamespace(name=parent) if parent else None)

    events = [event("cudaLaunchKernel", 5, "aten::mm"), event("cudaLaunchKernel", 2000, "aten::mm"),
              event("cudaLaunchKernel", 900, "aten::_flash_attention_forward"),
              event("cuLaunchKernel", 3000, None), event("aten::mm", 9000, None),
              event("cudaHostAlloc", 700, "aten::pin_memory"),
              event("some_kernel", 4000, None, device="CUDA")]
    events.append(event("cudaDeviceSynchronize", 50_000, None))  # a wait: never "long"
    got = gpu_check.api_calls(SimpleNamespace(events=lambda: events))
    assert got["calls"]["cudaDeviceSynchronize"] == {"n": 1, "ms": 50.0, "long_n": 0,
                                                     "long_ms": 0.0}
    del got["calls"]["cudaDeviceSynchronize"]
    assert got["calls"]["cudaLaunchKernel"] == {"n": 3, "ms": 2.9, "long_n": 2, "long_ms": 2.9}
    assert set(got["calls"]) == {"cudaLaunchKernel", "cuLaunchKernel", "cudaHostAlloc"}
    assert next(iter(got["calls"])) == "cuLaunchKernel"  # the most time first
    assert got["long_by_op"] == {"(none)": {"n": 1, "ms": 3.0}, "aten::mm": {"n": 1, "ms": 2.0},
                                 "aten::_flash_attention_forward": {"n": 1, "ms": 0.9},
                                 "aten::pin_memory": {"n": 1, "ms": 0.7}}
