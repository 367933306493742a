"""An in-process CPU engine's started passes: at once, cancellable, short ones between layers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from qwen3.layered import LayeredCpuEngine
from smysl.qwen3 import passes
from smysl.qwen3.client import PassCancelled
from smysl.qwen3.passes import PassThread


def test_short_passes_run_between_the_layers_of_a_long_one() -> None:
    """A server's compute thread computed an in-process CPU pass itself: a one-word query
    waited for a 16K-token document's whole pass (20 s where an engine process took 3 s).
    Started passes within the budget run between the long one's layers, merged into one pass
    (one a request cost each a pass over every layer: the long one took 3x as long), and
    their rows come first; a second long one waits for the first."""
    engine = LayeredCpuEngine()
    thread = PassThread(engine, budget=1024)  # type: ignore[arg-type]
    long = thread.start([[1] * 2000])
    engine.until(("launch", (1,)))
    short, second = thread.start([[2, 2], [3]]), thread.start([[4] * 1500])
    other = thread.start([[7]])
    engine.step()  # the first layer ends: the short passes run now, merged into one
    assert short().tolist() == [[2, 2], [3, 1]] and other().tolist() == [[7, 1]]
    assert ("launch", (4,)) not in engine.events
    engine.step()
    engine.step()
    assert long().tolist() == [[1, 2000]]
    engine.until(("launch", (4,)))
    for _ in range(engine.layers):
        engine.step()
    assert second().tolist() == [[4, 1500]]
    assert engine.events == [("launch", (1,)), ("launch", (2, 3, 7)), ("done", (2, 3, 7)),
                             ("done", (1,)), ("launch", (4,)), ("done", (4,))]


def test_a_cancelled_long_pass_stops_at_its_next_layer_and_a_waiting_one_never_starts() -> None:
    """Nothing stopped an in-process pass whose client had gone: it computed to its end, and
    everything behind it waited (and timed out). Cancelled, a long pass stops after the layer
    it is in, and one not started yet is dropped; the thread goes on."""
    engine = LayeredCpuEngine()
    thread = PassThread(engine, budget=1024)  # type: ignore[arg-type]
    long, waiting = thread.start([[1] * 2000]), thread.start([[2] * 1500])
    short = thread.start([[8]])
    engine.until(("launch", (1,)))
    # answered at once, not when the long pass ends (a review: a server's finisher thread
    # waited for it, and the short batches' rows behind it with it)
    waiting.cancel()
    short.cancel()
    with pytest.raises(PassCancelled, match="dropped before it started"):
        waiting()
    with pytest.raises(PassCancelled, match="dropped before it started"):
        short()
    long.cancel()
    engine.step()
    with pytest.raises(PassCancelled, match="stopped at a layer's end"):
        long()
    assert thread.start([[3, 3]])().tolist() == [[3, 2]]
    assert ("launch", (2,)) not in engine.events and ("done", (1,)) not in engine.events
    assert ("launch", (8,)) not in engine.events


def test_an_error_reaches_its_caller_and_the_thread_ends_when_idle(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A pass's error is its caller's; the thread ends when idle (it would keep the engine
    alive) and starts again with the next pass."""
    monkeypatch.setattr(passes, "IDLE_S", 0.05)

    class Failing(LayeredCpuEngine):
        def submit(self, batch, heads=None, between=None):  # type: ignore[no-untyped-def]
            if batch == [[9]]:
                raise ValueError("bad ids")
            return super().submit(batch, heads, between)

    engine = Failing()
    thread = PassThread(engine, budget=1024)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad ids"):
        thread.start([[9]])()
    assert thread.start([[5]])().tolist() == [[5, 1]]
    deadline = time.monotonic() + 5
    while any(t.name == "smysl-engine-pass" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the pass thread did not end when idle"
        time.sleep(0.02)
    assert thread.start([[6]])().tolist() == [[6, 1]]


def test_a_real_engine_starts_passes_with_the_rows_of_forward(tiny) -> None:  # type: ignore[no-untyped-def]
    """``Engine.start`` on CPU gives the rows ``forward`` gives, bit for bit, a short pass
    run between a long one's layers included, merged with another (the tiny model's budget
    made small)."""
    engine = tiny.engine
    long = tiny.tokenize(["слово " * 120 + "word " * 80])
    short = tiny.tokenize(["a query", "и ещё одна"])
    third = tiny.tokenize(["третья, merged with them"])
    thread = PassThread(engine, budget=64)
    entered = threading.Event()
    release = threading.Event()
    original = engine.submit

    def slow_submit(batch, heads=None, between=None):  # type: ignore[no-untyped-def]
        def hold() -> None:  # the long pass waits at its first layer's end
            if not entered.is_set():
                entered.set()
                assert release.wait(10)
            between()
        return original(batch, heads, between=hold if between is not None else None)

    engine.submit = slow_submit
    try:
        pending_long = thread.start(long)
        assert entered.wait(10)
        pending_short, pending_third = thread.start(short), thread.start(third)
        time.sleep(0.05)
        release.set()
        rows_short, rows_long = pending_short(), pending_long()
        rows_third = pending_third()
    finally:
        del engine.submit
    assert np.array_equal(rows_short, engine.forward(short))
    assert np.array_equal(rows_third, engine.forward(third))
    assert np.array_equal(rows_long, engine.forward(long))
    assert np.array_equal(engine.start(short)(), engine.forward(short))


def test_the_engine_is_freed_when_dropped_and_a_close_drops_what_waits(tiny_dir) -> None:  # type: ignore[no-untyped-def]
    """The pass thread held its engine (a reference cycle through ``Engine._passes``): a
    model dropped kept its weights until the cycle collector ran. And a close left passes
    queued, to start after it returned."""
    import gc
    import weakref

    from smysl import Embedder
    from smysl.qwen3.engine import PassStopped

    model = Embedder.load(str(tiny_dir), device="cpu", process=False)
    engine = model.engine
    ids = model.tokenize(["a text"])
    assert np.array_equal(engine.start(ids)(), engine.forward(ids))
    ref = weakref.ref(engine)
    gc.disable()  # freed by reference counts alone
    try:
        del engine, model
        assert ref() is None
    finally:
        gc.enable()

    model = Embedder.load(str(tiny_dir), device="cpu", process=False)
    passes = PassThread(model.engine, budget=64)
    held, entered = threading.Event(), threading.Event()
    original = model.engine.submit

    def blocking(batch, heads=None, between=None):  # type: ignore[no-untyped-def]
        entered.set()
        held.wait(10)
        return original(batch, heads, between)

    model.engine.submit = blocking  # type: ignore[method-assign]
    first, second = passes.start(ids), passes.start(ids)
    assert entered.wait(10)  # the first one runs, the second waits
    passes.fail_queued(PassStopped("closing"))
    with pytest.raises(PassStopped, match="closing"):
        second()
    held.set()
    assert np.array_equal(first(), model.engine.forward(ids))
    model.close()
