"""Per-machine tuning (issue 13: the per-token work tuned by measurement, not by constants):
the cache's keys, storage and damage handling; ``tune`` and ``tune_threads`` on a tiny engine;
engines applying stored entries at load; ``smysl tune``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from qwen_tiny import TEXTS

from smysl import Embedder
from smysl.cli import main
from smysl.cpus import usable_cpus
from smysl.qwen3 import tuning
from smysl.qwen3.cpu import detect
from smysl.qwen3.engine import CHUNK_TOKENS
from smysl.qwen3.quantize import Int4Linear


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "tuning.json"
    monkeypatch.setenv("SMYSL_TUNING", str(path))
    threads = torch.get_num_threads()
    yield path
    torch.set_num_threads(threads)  # a stored thread count is applied process-wide


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
    # no temporary left (the lock file stays: removing it would race with its next holder)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["tuning.json", "tuning.json.lock"]


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
    # at this process's thread count (part of the key): another test of this process may
    # have set one (a child starts at torch's default)
    child = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", process=True,
                          threads=torch.get_num_threads())
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
            "--threads", str(torch.get_num_threads()),  # the slices only
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


def tk(e: Embedder) -> str:
    eng = e.engine
    return tuning.threads_key(eng.kernel, eng.torch_dtype, eng.model.cfg)  # type: ignore[attr-defined]


@pytest.fixture()
def fresh_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """No count applied yet in this process, none set by the environment."""
    monkeypatch.setattr(tuning, "_applied", None)
    monkeypatch.setattr(tuning, "_given", None)
    for v in tuning.THREAD_VARIABLES:
        monkeypatch.delenv(v, raising=False)


def test_threads_key_and_counts(tiny_dir: Path) -> None:
    e = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    k = tk(e)
    assert k.startswith("threads | ") and f"{usable_cpus()} CPUs" in k
    assert f"{torch.get_num_threads()} threads" not in k and "h64 i128 q4 kv2 d16" in k
    assert set(tuning.thread_counts(8)) == {1, 2, 4, 8, torch.get_num_threads()}
    assert {1, 2, 3} <= set(tuning.thread_counts(3))


def test_tune_threads_measures_and_restores(tiny_dir: Path, cache: Path) -> None:
    e = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    before = torch.get_num_threads()
    t = tuning.tune_threads(e.engine, counts=(1, 2), layers=1, rounds=1,  # type: ignore[arg-type]
                            batch_tokens=100, long_tokens=50)
    assert torch.get_num_threads() == before
    assert t.threads in (1, 2) and set(t.seconds) == {1, 2} and t.measured
    assert all(s > 0 for s in t.seconds.values())
    # the current count stays when the others are within the tie of it
    assert tuning._pick({1: 1.0, 2: 1.01}, current=2) == 2
    assert tuning._pick({1: 1.0, 2: 1.5}, current=2) == 1


def test_engines_apply_a_stored_thread_count_unless_told_otherwise(
        tiny_dir: Path, cache: Path, fresh_threads: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    e = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert e.engine.tuned_threads is None  # type: ignore[attr-defined]
    start = torch.get_num_threads()
    want = 1 if start != 1 else 2
    tuning.store(tk(e), tuning.Threads(threads=want, measured="2026-11-30T17:00:00+00:00"))
    monkeypatch.setenv("OMP_NUM_THREADS", str(start))  # a caller's (or Ray's) own setting wins
    assert Embedder.load(str(tiny_dir), device="cpu", dtype="float32").info().threads == start
    monkeypatch.delenv("OMP_NUM_THREADS")
    given = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", threads=start)
    assert given.engine.tuned_threads is None and given.info().threads == start  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="smysl.qwen3.tuning"):
        tuned = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert torch.get_num_threads() == want and tuned.info().threads == want
    assert tuned.engine.tuned_threads.threads == want  # type: ignore[attr-defined]
    assert f"{want} threads, as measured on this machine" in caplog.text
    # another path's entry with another count does not retune this process under the first
    q = Embedder.load(str(tiny_dir), device="cpu", quantize="int8")
    tuning.store(tk(q), tuning.Threads(threads=start))
    q2 = Embedder.load(str(tiny_dir), device="cpu", quantize="int8")
    assert torch.get_num_threads() == want and q2.engine.tuned_threads is None  # type: ignore[attr-defined]


def test_a_count_above_the_usable_cpus_is_ignored(tiny_dir: Path, cache: Path,
                                                  fresh_threads: None) -> None:
    e = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    tuning.store(tk(e), tuning.Threads(threads=usable_cpus() + 1))
    again = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert again.engine.tuned_threads is None  # type: ignore[attr-defined]


def test_default_threads_fit_a_cpu_quota(tiny_dir: Path, cache: Path, fresh_threads: None,
                                         monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """No ``threads`` and none measured: torch's default (the cores it sees) is cut to the
    CPUs a container's quota allows; a count the environment sets is the user's and stays."""
    torch.set_num_threads(2)
    want = Embedder.load(str(tiny_dir), device="cpu", dtype="float32").embed(["один", "two"])
    monkeypatch.setattr(tuning, "usable_cpus", lambda: 1)  # a quota of 1.5 CPUs, say
    with caplog.at_level("INFO", logger="smysl.qwen3.tuning"):
        e = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert torch.get_num_threads() == 1 and e.engine.threads == 1  # type: ignore[attr-defined]
    assert "1 torch threads instead of 2: this process may use 1 CPUs" in caplog.text
    np.testing.assert_allclose(e.embed(["один", "two"]), want, atol=1e-6)
    Embedder.load(str(tiny_dir), device="cpu", dtype="float32", threads=2)
    assert torch.get_num_threads() == 2  # asked for: kept
    Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert torch.get_num_threads() == 2  # process-wide: not cut under the first engine
    monkeypatch.setattr(tuning, "_given", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert torch.get_num_threads() == 2  # the environment's count is the user's


def test_damaged_thread_entries_are_ignored(cache: Path) -> None:
    cache.write_text(json.dumps({"a": {"threads": 0}, "b": {"threads": "x"}, "c": {},
                                 "d": {"threads": tuning.MAX_THREADS + 1}, "e": 3}))
    assert all(tuning.lookup_threads(k) is None for k in "abcde")
    tuning.store("f", tuning.Threads(threads=4, seconds={4: 0.5}))
    assert tuning.lookup_threads("f") == tuning.Threads(threads=4, seconds={4: 0.5})


def test_cli_tune_measures_threads_unless_given(tiny_dir: Path, cache: Path,
                                                fresh_threads: None,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tuning, "thread_counts", lambda: (1, 2))  # any machine: two counts
    args = ["tune", "--model", str(tiny_dir), "--device", "cpu", "--dtype", "float32",
            "--slices", "16", "--layers", "1", "--rounds", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| threads |" in out and "| 1" in out and "| 2" in out and "| slice tokens |" in out
    data = json.loads(cache.read_text())
    # before any thread count was stored, --threads N stored slices only loads of N threads
    # find, without a word
    cache.write_text(json.dumps({k: v for k, v in data.items() if not k.startswith("threads")}))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert main([*args, "--threads", "1", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "these slices apply to loads that run 1 thread (--threads 1)" in err
    assert "(1 layer, 1 round per size)" in err
    # under OMP_NUM_THREADS, loads without --threads run its count, not torch's default
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main([*args, "--threads", "1", "--dry-run"]) == 0
    assert "loads without --threads run the count OMP_NUM_THREADS=1 sets" in \
        capsys.readouterr().err
    monkeypatch.delenv("OMP_NUM_THREADS")
    cache.write_text(json.dumps(data))
    (threads_entry,) = (v for k, v in data.items() if k.startswith("threads | "))
    assert len(data) == 2 and threads_entry["threads"] in (1, 2)
    other = 3 - threads_entry["threads"]
    assert main([*args, "--threads", str(other)]) == 0
    captured = capsys.readouterr()
    assert "| threads |" not in captured.out
    n = threads_entry["threads"]
    assert f"run the {n} thread{'s' if n > 1 else ''} measured earlier" in captured.err
    assert len(json.loads(cache.read_text())) == 3  # the slices under --threads added


def test_cli_tune_measures_under_the_environments_thread_count(
        tiny_dir: Path, cache: Path, fresh_threads: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With OMP_NUM_THREADS set, loads run its count and never a measured one: `smysl tune`
    measured the thread count anyway and stored the slices under the count it picked, a key
    no later load asked for (the slices were silently never used)."""
    start = torch.get_num_threads()
    other = 1 if start != 1 else 2
    monkeypatch.setenv("OMP_NUM_THREADS", str(start))
    # as if another count had measured fastest
    monkeypatch.setattr(tuning, "tune_threads", lambda *a, **k: tuning.Threads(threads=other))
    assert main(["tune", "--model", str(tiny_dir), "--device", "cpu", "--dtype", "float32",
                 "--slices", "16", "--layers", "1", "--rounds", "1"]) == 0
    captured = capsys.readouterr()
    assert "| threads |" not in captured.out
    assert f"OMP_NUM_THREADS={start} is set: loads run that count" in captured.err
    (k,) = json.loads(cache.read_text())  # the slices only
    assert f"| {start} threads |" in k
    e = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert e.info().threads == start and e.engine.tuned is not None  # type: ignore[attr-defined]
    assert e.engine.chunk == 16  # type: ignore[attr-defined]


def test_cli_tune_refuses_what_it_would_ignore(tiny_dir: Path, cache: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A review's: `--slices ''` measured the default sizes, and `--layers 100` on a 2-layer
    model timed 2 layers, each without a word."""
    args = ["tune", "--model", str(tiny_dir), "--device", "cpu", "--dtype", "float32",
            "--rounds", "1", "--dry-run"]
    # a model served elsewhere: said so (a review's: it blamed a --device never given)
    assert main(["tune", "--model", "ollama:tinyq4"]) == 2
    err = capsys.readouterr().err
    assert "smysl tune measures smysl's own CPU engine (this model in it: " \
           "ollama-store:tinyq4)" in err and "--device" not in err
    assert main(["tune", "--model", "openai:text-embedding-3-small"]) == 2
    assert "runs through the openai: backend" in capsys.readouterr().err
    # more threads than CPUs: timings of threads waiting for each other, said
    many = usable_cpus() + 1
    assert main([*args, "--slices", "16", "--layers", "1", "--threads", str(many)]) == 0
    assert f"--threads {many} is more than the" in capsys.readouterr().err
    assert main([*args, "--slices", ""]) == 2
    assert "--slices takes comma-separated token counts, not ''" in capsys.readouterr().err
    assert main([*args, "--slices", "16", "--layers", "100"]) == 2
    assert "--layers 100: the model has 2 decoder layers" in capsys.readouterr().err
    assert not cache.exists() or not json.loads(cache.read_text())


def test_two_tuners_keep_each_others_entries(cache: Path) -> None:
    """`smysl tune` for two models at once: each read the file, added its entry and renamed
    its copy into place, so about half of the entries were lost (52 and 47 of 100 each)."""
    import threading

    def tune(worker: int) -> None:
        for i in range(40):
            tuning.store(f"m{worker}-{i}", tuning.Threads(threads=2, measured="now",
                                                          seconds={2: 1.0}), cache)

    threads = [threading.Thread(target=tune, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(json.loads(cache.read_text(encoding="utf-8"))) == sorted(
        f"m{w}-{i}" for w in range(3) for i in range(40))
