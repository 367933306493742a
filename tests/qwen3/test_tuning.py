"""Per-machine tuning (issue 13: the per-token work tuned by measurement, not by constants):
the cache's key, storage and damage handling; ``tune`` on a tiny engine; engines applying a
stored entry at load; ``smysl tune``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from qwen_tiny import TEXTS

from smysl import Embedder
from smysl.cli import main
from smysl.qwen3 import tuning
from smysl.qwen3.cpu import detect
from smysl.qwen3.engine import CHUNK_TOKENS
from smysl.qwen3.quantize import Int4Linear


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tuning.json"
    monkeypatch.setenv("SMYSL_TUNING", str(path))
    return path


def int4_layers(e: Embedder) -> list[Int4Linear]:
    return [m for m in e.engine.model.modules()  # type: ignore[attr-defined]
            if isinstance(m, Int4Linear)]


def test_key_names_what_moves_the_optimum(tiny_dir: Path) -> None:
    e = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    k = tuning.key(e.engine)  # type: ignore[arg-type]
    assert detect().describe() in k and f"torch {torch.__version__}" in k
    assert f"{torch.get_num_threads()} threads" in k and "float32" in k
    assert e.engine.kernel in k and "h64 i128 q4 kv2 d16" in k
    q = Embedder.load(str(tiny_dir), device="cpu", quantize="int4")
    assert tuning.key(q.engine).endswith(" | planes 1")  # type: ignore[arg-type]


def test_store_and_lookup(cache: Path) -> None:
    assert tuning.lookup("a") is None  # no file yet
    t = tuning.Tuned(chunk=512, dequant_rows=None, measured="2026-11-30T14:00:00+00:00",
                     seconds={256: 0.5, 512: 0.4})
    assert tuning.store("a", t) == cache
    tuning.store("b", tuning.Tuned(chunk=128, dequant_rows=96))
    assert tuning.lookup("a") == t and tuning.lookup("b").dequant_rows == 96  # type: ignore[union-attr]
    assert [p.name for p in cache.parent.iterdir()] == ["tuning.json"]  # no temporary left


def test_damaged_cache_is_ignored_with_a_warning(cache: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cache.write_text("{not json")
    assert tuning.lookup("a") is None
    assert "ignoring the tuning file" in caplog.text
    cache.write_text(json.dumps({"a": {"chunk": "many"}, "b": {"chunk": 0},
                                 "c": {"nothing": 1}, "d": [1], "f": {"chunk": 8, "seconds": [1]},
                                 "g": {"chunk": 8, "dequant_rows": -1},
                                 "h": {"chunk": tuning.MAX_SLICE + 1}}))
    assert all(tuning.lookup(k) is None for k in "abcdfgh")
    tuning.store("e", tuning.Tuned(chunk=64))  # a damaged file is replaced, entries kept
    assert tuning.lookup("e") == tuning.Tuned(chunk=64)


def test_tune_measures_and_leaves_the_engine_as_it_was(tiny_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    e = Embedder.load(str(tiny_dir), device="cpu", quantize="int4")
    engine = e.engine
    before = (engine.chunk, len(engine.model.layers),  # type: ignore[attr-defined]
              [m.dequant_rows for m in int4_layers(e)])
    t = tuning.tune(engine, slices=(1, 16, 64), layers=1, rounds=1,  # type: ignore[arg-type]
                    batch_tokens=200, long_tokens=100)
    assert t.chunk in (1, 16, 64) and set(t.seconds) == {1, 16, 64}
    assert all(s > 0 for s in t.seconds.values()) and t.measured
    assert t.dequant_rows in (*tuning.ROWS, tuning.NEVER)
    assert (engine.chunk, len(engine.model.layers),  # type: ignore[attr-defined]
            [m.dequant_rows for m in int4_layers(e)]) == before
    from smysl.qwen3 import quantize

    with monkeypatch.context() as m:  # where no layer dequantises, the threshold is "never"
        m.setattr(quantize, "dequantises", lambda n: False)
        assert tuning.tune(engine, slices=(16,), layers=1, rounds=1,  # type: ignore[arg-type]
                           batch_tokens=100, long_tokens=50).dequant_rows == tuning.NEVER
    f = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert tuning.tune(f.engine, slices=(8, 32), layers=1, rounds=1,  # type: ignore[arg-type]
                       batch_tokens=100, long_tokens=50).dequant_rows is None


def test_engines_apply_a_stored_entry_at_load(tiny_dir: Path, cache: Path) -> None:
    plain = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    base = plain.embed(TEXTS)
    assert plain.engine.tuned is None  # type: ignore[attr-defined]
    assert (plain.info().slice_tokens, plain.info().tuned_at) == (CHUNK_TOKENS["cpu"], None)
    tuning.store(tuning.key(plain.engine), tuning.Tuned(chunk=7))  # type: ignore[arg-type]
    q = Embedder.load(str(tiny_dir), device="cpu", quantize="int4")
    tuning.store(tuning.key(q.engine),  # type: ignore[arg-type]
                 tuning.Tuned(chunk=33, dequant_rows=100))
    tuned = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert tuned.engine.chunk == 7  # type: ignore[attr-defined]
    info = tuned.info()
    assert (info.slice_tokens, info.tuned_at) == (7, "unknown")  # stored without a date
    child = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", process=True)
    try:  # an engine in a child process reads the same file and says so
        assert (child.info().slice_tokens, child.info().tuned_at) == (7, "unknown")
    finally:
        child.close()
    assert np.array_equal(tuned.embed(TEXTS), base)  # slices never change fp32 vectors
    tq = Embedder.load(str(tiny_dir), device="cpu", quantize="int4")
    assert tq.engine.chunk == 33 and tq.engine.tuned.dequant_rows == 100  # type: ignore[attr-defined]
    assert {m.dequant_rows for m in int4_layers(tq)} == {100}


def test_cli_tune(tiny_dir: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tune", "--model", str(tiny_dir), "--device", "cpu", "--dtype", "float32",
            "--slices", "16,4", "--layers", "1", "--rounds", "1"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "| 4" in out.out and "| 16" in out.out and "(chosen)" in out.out
    assert not cache.exists()
    assert main(args) == 0
    assert f"stored in {cache}" in capsys.readouterr().err
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["chunk"] in (4, 16)
    assert main([*args[:-6], "--slices", "0,8"]) == 2
    assert "positive numbers" in capsys.readouterr().err
    assert main([*args[:-6], "--slices", "a,b"]) == 2
    assert "comma-separated" in capsys.readouterr().err
    assert main([*args[:-6], "--slices", f"8,{tuning.MAX_SLICE * 2}"]) == 2
    assert "at most" in capsys.readouterr().err
