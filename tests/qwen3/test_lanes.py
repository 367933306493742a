"""Lanes (``smysl.qwen3.lanes``): a bulk call's batches a few at a time, each on a share of
torch's threads; the vectors bit-identical to one lane's and to each text embedded alone."""

from __future__ import annotations

import gc
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from qwen_tiny import TEXTS

from smysl import Embedder
from smysl.cpus import usable_cpus
from smysl.options import ModelOptions
from smysl.qwen3 import engine as engine_mod
from smysl.qwen3 import tuning
from smysl.qwen3.engine import PassStopped
from smysl.qwen3.lanes import Lanes, LanesClosed, Slots, default_lanes, per_thread_counts
from smysl.qwen3.model import attend_one

two_threads = pytest.mark.skipif(
    usable_cpus() < 2 or not per_thread_counts(),
    reason="needs 2 CPUs and torch's OpenMP backend")


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [*TEXTS, *(f"text {i} " * rng.randint(1, 40) for i in range(n))]


def test_default_lanes_rule() -> None:
    even = 2 if per_thread_counts() else 1
    assert default_lanes(2, "onednn") == even and default_lanes(8, "onednn-int8") == even
    assert default_lanes(1, "onednn") == 1 and default_lanes(3, "onednn") == 1
    assert default_lanes(4, "int4") == 1  # its layers dequantise per call: lanes did it twice


def test_lanes_option_is_checked() -> None:
    with pytest.raises(ValueError, match="lanes"):
        ModelOptions(lanes=0)
    assert ModelOptions(lanes=2).lanes == 2
    # a review's: lanes=2 on one thread ran one lane without a word
    with pytest.raises(ValueError, match="more than threads"):
        ModelOptions(threads=1, lanes=2)
    assert ModelOptions(threads=2, lanes=2).lanes == 2


def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_slots_give_a_whole_holder_the_cpu_alone() -> None:
    slots = Slots(2)
    events: list[str] = []
    ones = [threading.Event() for _ in range(2)]

    def one(i: int) -> None:
        with slots.hold(1):
            events.append(f"one{i} in")
            ones[i].wait(5)
            events.append(f"one{i} out")

    def whole() -> None:
        with slots.hold(2):
            events.append("whole")

    a = threading.Thread(target=one, args=(0,))
    a.start()
    until(lambda: events == ["one0 in"])
    w = threading.Thread(target=whole)
    w.start()
    until(lambda: slots.waiting == 1)
    b = threading.Thread(target=one, args=(1,))  # arrives while the whole holder waits
    b.start()
    time.sleep(0.05)
    assert events == ["one0 in"]  # a slot is free, but the waiting whole holder goes first
    ones[0].set()
    w.join(5)
    ones[1].set()
    a.join(5)
    b.join(5)
    assert events == ["one0 in", "one0 out", "whole", "one1 in", "one1 out"]


@two_threads
def test_lanes_run_with_their_share_of_threads_and_keep_the_callers() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[tuple[str, int]] = []

        def fn(i: int, stop: threading.Event) -> int:
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return i * i

        lanes: Lanes[int, int] = Lanes(2, 1, fn)
        assert lanes.count == 2
        assert torch.get_num_threads() == 2  # the caller's count is its own
        out = list(lanes.map(range(10), whole=lambda i: i == 5, alone=lambda i: -i))
        assert out == [i * i if i != 5 else -5 for i in range(10)]  # in order
        assert {n for _, n in seen} == {1} and len(seen) == 9
        assert all(name.startswith("smysl-lane-") for name, _ in seen)
        fresh: list[int] = []  # a thread started later gets the process's count, not a lane's
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert fresh == [2]
        lanes.close()
    finally:
        torch.set_num_threads(before)


def test_lane_errors_reach_the_caller_and_the_rest_is_dropped() -> None:
    ran: list[int] = []
    gate = threading.Event()

    def fn(i: int, stop: threading.Event) -> int:
        gate.wait(5)
        ran.append(i)
        if i == 1:
            raise RuntimeError("boom")
        return i

    lanes: Lanes[int, int] = Lanes(1, 1, fn)
    it = lanes.map(range(6), whole=lambda i: False, alone=lambda i: i, ahead=3)
    gate.set()
    assert next(it) == 0
    with pytest.raises(RuntimeError, match="boom"):
        next(it)
    lanes.close()
    time.sleep(0.1)
    assert 5 not in ran  # never queued: the caller stopped at the error


def test_a_bulk_call_ended_early_tells_its_running_items_to_stop() -> None:
    """A caller that stops iterating (an error, Ctrl-C) cancels its queued items and sets the
    running ones' ``stop``: a Ctrl-C of ``smysl embed`` waited for every running pass (7.8 s
    on the 0.6B shape, minutes on the 8B's)."""
    running = threading.Event()
    stopped: list[bool] = []
    ran: list[int] = []

    def fn(i: int, stop: threading.Event) -> int:
        ran.append(i)
        if i == 1:
            running.set()
            stopped.append(stop.wait(10))
        return i

    lanes: Lanes[int, int] = Lanes(1, 1, fn)
    it = lanes.map(range(4), whole=lambda i: False, alone=lambda i: i, ahead=4)
    assert next(it) == 0
    assert running.wait(10)
    t = time.monotonic()
    it.close()
    until(lambda: bool(stopped))
    assert stopped == [True] and time.monotonic() - t < 2
    lanes.close()
    assert ran == [0, 1]  # 2 and 3 were cancelled before they started


def _waits_for_stop() -> tuple[threading.Event, list[bool],
                               Callable[[int, threading.Event], int]]:
    """A lane function that waits (up to 10 s) to be told to stop -> the event set once it
    runs, whether it was told (appended when it returns), the function."""
    running = threading.Event()
    told: list[bool] = []

    def fn(i: int, stop: threading.Event) -> int:
        running.set()
        told.append(stop.wait(10))
        return i

    return running, told, fn


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_a_ctrl_c_while_waiting_for_a_lane_item_tells_it_to_stop() -> None:
    """The item a caller waits on when its Ctrl-C lands is told to stop too (it had been
    taken off the pending ones, so it ran to its end)."""
    if (signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            or threading.current_thread() is not threading.main_thread()):
        pytest.skip("needs Python's own SIGINT handler in the main thread")
    running, told, fn = _waits_for_stop()

    def ctrl_c() -> None:
        running.wait(10)
        time.sleep(0.1)  # the caller waits on the item's result
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    lanes: Lanes[int, int] = Lanes(1, 1, fn)
    threading.Thread(target=ctrl_c).start()
    with pytest.raises(KeyboardInterrupt):
        list(lanes.map(range(1), whole=lambda i: False, alone=lambda i: i))
    until(lambda: bool(told))
    assert told == [True]
    lanes.close()


def test_close_tells_running_items_to_stop() -> None:
    """Without a caller that stops (a daemon thread's bulk call at the interpreter's exit,
    whose lanes the engine's finalizer closes), close still tells the running item to stop:
    it waited for it, up to 30 s, then left it inside torch."""
    running, told, fn = _waits_for_stop()

    lanes: Lanes[int, int] = Lanes(1, 1, fn)
    got: list[object] = []

    def call() -> None:
        try:
            got.extend(lanes.map(range(3), whole=lambda i: False, alone=lambda i: i))
        except LanesClosed as e:
            got.append(e)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert running.wait(10)
    t = time.monotonic()
    lanes.close()
    assert told == [True] and time.monotonic() - t < 2
    caller.join(10)
    assert got[0] == 0 and isinstance(got[-1], LanesClosed)  # the rest were dropped


def test_close_drops_the_queued_items_of_a_running_call() -> None:
    """Items not started when the lanes close are not run (close ran them all, so a closing
    engine waited for every queued pass); their caller gets :class:`LanesClosed`."""
    gate, running = threading.Event(), threading.Event()
    ran: list[int] = []

    def fn(i: int, stop: threading.Event) -> int:
        running.set()
        gate.wait(10)
        ran.append(i)
        return i

    lanes: Lanes[int, int] = Lanes(1, 1, fn)
    got: list[object] = []

    def consume() -> None:
        try:
            for x in lanes.map(range(4), whole=lambda i: False, alone=lambda i: i, ahead=4):
                got.append(x)
        except LanesClosed as e:
            got.append(e)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert running.wait(10)
    closer = threading.Thread(target=lanes.close)
    closer.start()
    until(lambda: closer.is_alive() and lanes._closed)  # the queue is emptied under the lock
    gate.set()
    closer.join(10)
    consumer.join(10)
    assert ran == [0]
    assert got[0] == 0 and isinstance(got[1], LanesClosed) and len(got) == 2


@two_threads
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
def test_bulk_calls_in_lanes_are_bit_identical(tiny_dir: Path, kind: str) -> None:
    """Two lanes vs one, and vs each text alone (all threads), bit for bit; a lone long input
    runs on all threads in the caller's thread."""
    opts = {"dtype": "float32", "quantize": "int8"} if kind == "int8" else {"dtype": kind}
    emb = Embedder.load(str(tiny_dir), device="cpu", max_batch_tokens=64, lanes=2, **opts)
    engine = emb.engine
    assert emb.info().lanes == 2
    many = texts(40)
    two = emb.embed(many)
    assert engine.running_lanes == 2  # type: ignore[attr-defined]
    engine.set_lanes(1)  # type: ignore[attr-defined]
    one = emb.embed(many)
    alone = np.concatenate([emb.embed([t]) for t in many])
    assert np.array_equal(two, one) and np.array_equal(two, alone)
    engine.set_lanes(2)  # type: ignore[attr-defined]
    where: list[tuple[str, list[int]]] = []
    forward = engine.forward

    def spy(batch: list[list[int]], heads: list[int] | None = None) -> np.ndarray:
        where.append((threading.current_thread().name, [len(s) for s in batch]))
        return forward(batch, heads)

    engine.forward = spy  # type: ignore[method-assign]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_mod, "LANE_TOKENS", 30)
        long_text = "word " * 60
        out = emb.embed([long_text, *many[:6]])
    # lone inputs over the threshold (the long one among them) ran in the caller's thread, on
    # all threads; everything else in the lanes
    long_len = len(emb.tokenize([long_text])[0])
    assert {name for name, _ in where} == {threading.current_thread().name}
    assert [long_len] in [lens for _, lens in where]
    assert all(len(lens) == 1 and lens[0] > 30 for _, lens in where)
    assert np.array_equal(out[0], emb.embed([long_text])[0])
    engine.close()  # type: ignore[attr-defined]


def test_one_batch_runs_on_all_threads(tiny_dir: Path) -> None:
    emb = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", lanes=2)
    emb.embed(TEXTS)  # one batch: no lanes started
    assert emb.engine.running_lanes == 0  # type: ignore[attr-defined]


@two_threads
def test_lanes_survive_close_abandoned_calls_and_concurrent_passes(tiny_dir: Path) -> None:
    emb = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", max_batch_tokens=48,
                        lanes=2)
    engine = emb.engine
    many = texts(30)
    want = emb.embed(many)
    # a bulk call abandoned half-way, then the engine used again
    seqs = emb.tokenize(many)
    it = engine.forward_many([[s] for s in seqs])
    next(it)
    it.close()
    assert np.array_equal(emb.embed(many), want)
    # a full-thread pass from another thread during a bulk call: same vectors, no deadlock
    other: list[np.ndarray] = []
    t = threading.Thread(target=lambda: other.append(emb.embed(many[:1])))
    t.start()
    assert np.array_equal(emb.embed(many), want)
    t.join(30)
    assert np.array_equal(other[0], want[:1])
    # closed between calls: the next bulk call starts them again
    engine.close()  # type: ignore[attr-defined]
    assert engine.running_lanes == 0  # type: ignore[attr-defined]
    assert np.array_equal(emb.embed(many), want) and engine.running_lanes == 2  # type: ignore[attr-defined]
    # closed under a running bulk call: that call fails clearly, the engine goes on
    it = engine.forward_many([[s] for s in seqs])
    next(it)
    engine.close()  # type: ignore[attr-defined]
    with pytest.raises((LanesClosed, PassStopped)):  # queued passes dropped, running stopped
        list(it)
    assert np.array_equal(emb.embed(many), want)


@two_threads
def test_lanes_fit_the_threads_and_stop_with_their_engine(tiny_dir: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        others = set(threading.enumerate())
        with caplog.at_level(logging.WARNING, logger="smysl.qwen3.engine"):
            emb = Embedder.load(str(tiny_dir), device="cpu", dtype="float32",
                                max_batch_tokens=48, lanes=4)
        assert "lanes=4: torch runs 2 thread(s) here" in caplog.text  # said, not silent
        emb.embed(texts(20))
        engine = emb.engine
        assert engine.running_lanes == 2  # type: ignore[attr-defined]  # 4 lanes, 2 threads
        assert emb.info().lanes == 2  # what runs (it said 4)
        torch.set_num_threads(1)  # the caller's count changed: one lane fits, none run
        emb.embed(texts(20))
        assert engine.running_lanes == 0  # type: ignore[attr-defined]
        assert emb.info().lanes == 1
        torch.set_num_threads(2)
        emb.embed(texts(20))
        lanes = [t for t in set(threading.enumerate()) - others
                 if t.name.startswith("smysl-lane-")]
        assert len(lanes) == 2
        del emb, engine  # nothing else holds the engine: its lanes stop
        gc.collect()
        until(lambda: not any(t.is_alive() for t in lanes))
    finally:
        torch.set_num_threads(before)


@two_threads
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
def test_vectors_do_not_depend_on_the_thread_count(tiny_dir: Path, kind: str) -> None:
    """What lets lanes (threads // lanes each) give the vectors of one lane (all threads)."""
    opts = {"dtype": "float32", "quantize": "int8"} if kind == "int8" else {"dtype": kind}
    emb = Embedder.load(str(tiny_dir), device="cpu", lanes=1, **opts)
    before = torch.get_num_threads()
    try:
        runs = []
        for n in (2, 1):
            torch.set_num_threads(n)
            runs.append(emb.embed(texts(30)))
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(runs[0], runs[1])


@two_threads
def test_one_query_attention_does_not_depend_on_the_thread_count() -> None:
    """SDPA's kernel for 1-3 queries split the keys by thread (float32 sums changed in ~2/3 of
    these cases); :func:`attend_one` does not, at the real head size."""
    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    try:
        for _ in range(30):
            n = int(torch.randint(2, 600, (), generator=g))
            k = torch.randn(n, 8, 128, generator=g) * 3
            v = torch.randn(n, 8, 128, generator=g)
            q = torch.randn(16, 128, generator=g) * 3
            out = []
            for threads in (2, 1):
                torch.set_num_threads(threads)
                out.append(attend_one(q, k, v))
            assert torch.equal(out[0], out[1])
    finally:
        torch.set_num_threads(before)


def test_tune_measures_lanes_and_engines_use_them(tiny_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMYSL_TUNING", str(tmp_path / "tuning.json"))
    assert tuning.lane_counts(8) == (1, 2, 4, 8) and tuning.lane_counts(6) == (1, 2)
    assert tuning.lane_counts(1) == (1,)
    emb = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", lanes=1)
    engine = emb.engine
    monkeypatch.setattr(tuning, "lane_counts", lambda threads: (1, 2))
    lanes, seconds = tuning.tune_lanes(engine, chunk=64, layers=1, rounds=1,  # type: ignore[arg-type]
                                       batch_tokens=200, batches=4)
    assert lanes in (1, 2) and set(seconds) == {1, 2}
    assert engine.lanes == 1 and engine.running_lanes == 0  # type: ignore[attr-defined]
    k = tuning.key(engine)  # type: ignore[arg-type]
    tuning.store(k, tuning.Tuned(chunk=64, lanes=3, lane_seconds={1: 0.2, 3: 0.1}))
    assert tuning.lookup(k) == tuning.Tuned(chunk=64, lanes=3, lane_seconds={1: 0.2, 3: 0.1})
    tuned = Embedder.load(str(tiny_dir), device="cpu", dtype="float32")
    assert tuned.engine.lanes == 3  # type: ignore[attr-defined]  # the stored count, when none is given
    assert tuned.info().lanes == min(3, torch.get_num_threads())  # as many as fit
    given = Embedder.load(str(tiny_dir), device="cpu", dtype="float32", lanes=1)
    assert given.info().lanes == 1
    tuning.store(k, tuning.Tuned(chunk=64, lanes=0))
    assert tuning.lookup(k) is None  # out of range: ignored


@two_threads
def test_one_lane_where_the_gemms_follow_the_thread_count(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """With AMX-BF16 oneDNN's bf16 kernel for the 0.6B's down_proj follows the thread count: a
    lane (1 thread) gave other bits than a pass on 2 (min cosine 0.99998 over a corpus). Then
    the default is one lane, a text's vector the same however it was called; lanes asked for
    explicitly are kept, with a warning saying what they cost."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    asked: list[tuple[int, ...]] = []

    def differs(model: object, threads: tuple[int, ...]) -> bool:
        asked.append(threads)
        return False

    monkeypatch.setattr(engine_mod, "same_bits_on", differs)
    try:
        with caplog.at_level("INFO", logger="smysl.qwen3.engine"):
            emb = Embedder.load(str(tiny_dir), device="cpu", dtype="bfloat16")
            assert emb.info().lanes == 1 and asked == [(2, 1)]
            assert "one lane: this CPU's bfloat16 GEMMs give other bits on 2 threads" in caplog.text
            one = emb
            emb = Embedder.load(str(tiny_dir), device="cpu", dtype="bfloat16", lanes=2)
            assert emb.info().lanes == 2
            assert "lanes=2: this CPU's bfloat16 GEMMs give other bits" in caplog.text
            assert "may differ in its last bits" in caplog.text
            caplog.clear()
            one.engine.set_lanes(2)  # type: ignore[attr-defined]  # as smysl tune does
            assert "may differ in its last bits" in caplog.text
            one.engine.set_lanes(1)  # type: ignore[attr-defined]
            # smysl tune times only the counts that keep the bits: one lane here
            lanes, seconds = tuning.tune_lanes(one.engine, 16, layers=1, rounds=1,  # type: ignore[arg-type]
                                               batch_tokens=64, batches=2)
            assert lanes == 1 and seconds == {}
            # a stored count of 2 is not used either, and the log says what is
            monkeypatch.setenv("SMYSL_TUNING", str(tmp_path / "tuning.json"))
            tuning.store(tuning.key(one.engine),  # type: ignore[arg-type]
                         tuning.Tuned(chunk=64, lanes=2))
            caplog.clear()
            with caplog.at_level("INFO", logger="smysl.qwen3.tuning"):
                tuned = Embedder.load(str(tiny_dir), device="cpu", dtype="bfloat16")
            assert tuned.info().lanes == 1 and "1 lane(s) for bulk calls" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_same_bits_on_runs_each_shape_at_each_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check runs each bf16 layer shape at each count, finds a kernel whose bits follow the
    count, and restores the caller's count."""
    from smysl.qwen3.cpu import packs_linear
    from smysl.qwen3.model import PackedLinear, same_bits_on

    if not packs_linear(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bf16 here")
    model = torch.nn.Sequential(PackedLinear(torch.randn(32, 64).bfloat16()),
                                PackedLinear(torch.randn(48, 32).bfloat16()))
    before = torch.get_num_threads()
    assert same_bits_on(model, (1, 1))
    seen: list[tuple[int, int]] = []
    gemm = PackedLinear.gemm

    def follows(self: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        seen.append((self.out_features, torch.get_num_threads()))
        return gemm(self, x) * torch.get_num_threads()  # other bits per count

    monkeypatch.setattr(PackedLinear, "gemm", follows)
    assert not same_bits_on(model, (3, 1))
    assert seen == [(32, 3), (32, 1)] and torch.get_num_threads() == before
