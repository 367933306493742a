"""A CPU engine's passes started for a server in this process, as an engine process runs them.

:meth:`Engine.submit <smysl.qwen3.engine.Engine.submit>` on CPU computes the pass in the
calling thread. A server's compute thread that called it was held for the whole pass: it could
neither stop a pass whose client had gone (a 16K-token document computed for a minute for
nobody, and every short query behind it timed out) nor start a short query until the long pass
ended. :class:`PassThread` runs the passes in a thread of its own instead, as the engine
process's hub (:class:`smysl.qwen3.worker._Hub`) does:

- :meth:`PassThread.start` returns at once; its ``cancel()`` drops a pass not yet started and
  stops a running pass with an input over the batch budget at its next layer;
- while such a pass runs, the passes started meanwhile within the budget run between its
  layers (in its thread, on the threads it holds), so a short query waits for one layer of a
  long document, not for all of it.

The engine is batch-invariant, so a row computed between another pass's layers has the bits it
has anywhere. The thread holds the engine only while a pass runs (a weak reference otherwise:
a model dropped frees its weights at once), ends when idle (:data:`IDLE_S`) and starts again
with the next pass.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from smysl.base import Pending
from smysl.qwen3.client import PassCancelled
from smysl.qwen3.contract import merge

if TYPE_CHECKING:
    from smysl.qwen3.engine import Engine

#: Seconds the thread waits for another pass before it ends.
IDLE_S = 2.0


class _Pass:
    """One started pass: its batch, and its rows or error once computed."""

    __slots__ = ("batch", "cancelled", "done", "error", "heads", "longest", "rows")

    def __init__(self, batch: list[list[int]], heads: list[int] | None) -> None:
        self.batch, self.heads = batch, heads
        self.longest = max(map(len, batch), default=0)
        #: Set by a cancel from any thread, read between a running pass's layers.
        self.cancelled = False
        self.done = threading.Event()
        self.rows: np.ndarray | None = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def wait(self) -> np.ndarray:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.rows is not None
        return self.rows


class PassThread:
    """Runs :meth:`Engine.submit` calls in a thread of their own (see the module's text).
    ``budget``: the token budget of a batch; a pass with an input over it takes the others
    between its layers."""

    def __init__(self, engine: Engine, budget: int) -> None:
        self._engine = weakref.ref(engine)
        self.budget = budget
        self._queue: deque[_Pass] = deque()
        self._cond = threading.Condition()
        self._running = False

    def start(self, batch: list[list[int]], heads: list[int] | None = None) -> Pending:
        """Queue one pass; the returned call waits for its rows (and raises what the pass
        raised, :class:`PassCancelled` after a cancel that dropped or stopped it)."""
        p = _Pass(batch, heads)
        with self._cond:
            self._queue.append(p)
            if self._running:
                self._cond.notify()
            else:
                thread = threading.Thread(target=self._loop, name="smysl-engine-pass",
                                          daemon=True)
                try:
                    thread.start()
                except BaseException:  # no thread (the interpreter stopping): nothing queued
                    self._queue.remove(p)
                    raise
                self._running = True
        return Pending(p.wait, functools.partial(self._cancel, p))

    def _cancel(self, p: _Pass) -> None:
        """Nobody will read ``p``'s rows: one still queued is answered at once (a server's
        finisher thread waiting for it was held until a long pass ended), a running one
        stops at its next layer if it is long."""
        with self._cond:
            p.cancelled = True
            if p not in self._queue:
                return
            self._queue.remove(p)
        p.fail(PassCancelled("the forward pass was dropped before it started: its caller "
                             "cancelled it"))

    def fail_queued(self, error: BaseException) -> None:
        """Answer every pass not yet started with ``error`` (its engine is closing)."""
        with self._cond:
            queued, self._queue = list(self._queue), deque()
        for p in queued:
            p.fail(error)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(IDLE_S)
                if not self._queue:
                    self._running = False
                    return
                p = self._queue.popleft()
            self._run(p, functools.partial(self._between, p) if p.longest > self.budget
                      else None)

    def _run(self, p: _Pass, between: Callable[[], None] | None = None) -> None:
        engine = self._engine()
        try:
            if engine is None:
                raise PassCancelled("the forward pass was dropped: its engine is gone")
            p.rows = engine.submit(p.batch, p.heads, between=between)()
        except BaseException as e:  # its caller raises it; this thread goes on
            p.error = e
        finally:
            del engine
            p.done.set()

    def _between(self, long: _Pass) -> None:
        """After each layer of ``long``'s pass: stop it if cancelled, else run the passes
        within the budget started meanwhile (on the threads and slots it holds)."""
        if long.cancelled:
            raise PassCancelled("the forward pass was stopped at a layer's end: its caller "
                                "cancelled it")
        with self._cond:
            short = [p for p in self._queue if p.longest <= self.budget]
            if not short:
                return
            self._queue = deque(p for p in self._queue if p.longest > self.budget)
        # merged into passes within the budget, as an engine process merges what arrived: a
        # pass per request (a server starts one per batch, and a query every 100 ms made ten
        # a layer) cost each its own pass over every layer, and the long one took 3x as long
        for group in merge([(p.batch, p.heads) for p in short], self.budget):
            self._run_merged([short[i] for i in group])

    def _run_merged(self, group: list[_Pass]) -> None:
        """Passes of inputs without shared heads, computed as one (the engine is
        batch-invariant: each gets its own rows' bits)."""
        if len(group) == 1:
            self._run(group[0])
            return
        together = _Pass([s for p in group for s in p.batch], None)
        self._run(together)
        start = 0
        for p in group:
            if together.error is not None:
                p.error = together.error
            else:
                assert together.rows is not None
                p.rows = together.rows[start : start + len(p.batch)]
            start += len(p.batch)
            p.done.set()
