"""Lanes: a bulk call's batches computed a few at a time, each on a share of torch's threads.

A CPU forward pass is GEMMs (which scale with threads) and a tail that does not: norms, RoPE,
softmax, attention of short texts, per-call dispatch, Python. With two lanes of one thread each,
one lane's tail overlaps the other's GEMMs: on a 2-vCPU AVX-512 EPYC (0.6B shape, the benchmark
corpus, 1,024-token batches) 3-5% faster than one lane of two threads for float32, bf16 and int8
in a careful A/B, int4 0.73x (docs/benchmarks.md, "Ninth session").

Each lane is a thread that runs torch with ``threads // lanes`` intra-op threads: OpenMP's thread
count is per calling thread (torch's ``set_num_threads`` sets the caller's), so the lanes and the
thread that built them each keep their own. The engine decides what runs where
(``Engine.forward_many``). A vector does not depend on where it ran: the CPU kernels give the
same bits at every thread count (tested per path; ``model.attend_one`` is the one that did not).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from typing import Generic, TypeVar

import torch

log = logging.getLogger(__name__)
_I = TypeVar("_I")
_R = TypeVar("_R")

#: Lanes being started in this process: one at a time (see :class:`Lanes`).
_STARTING = threading.Lock()


def default_lanes(threads: int, kernel: str) -> int:
    """Lanes when neither the caller nor ``smysl tune`` chose: two where torch runs an even
    number of threads (each lane half of them), else one; one for int4 layers (``kernel``
    "int4"), which dequantise their weights on every call of a batch: two lanes did that twice
    over and ran 0.73x one lane on the benchmark corpus."""
    if kernel == "int4" or threads < 2 or threads % 2 or not per_thread_counts():
        return 1
    return 2


def per_thread_counts() -> bool:
    """Whether torch's thread count is per calling thread here (its OpenMP backend): the
    lanes need it, a process-wide pool would give every lane all the threads."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


class Slots:
    """``size`` slots of CPU: a lane's batch holds one, a pass on all threads holds them all.
    A caller waiting for all of them goes before later single-slot callers (so a steady stream
    of lane batches cannot keep it out; a steady stream of full passes can keep lanes out)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._whole_waiting = 0
        # the bookkeeping runs under a plain lock, whose enter and exit are C: a Ctrl-C cannot
        # land between taking the lock and giving it back (Condition's own are Python)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._held = _Held()

    @property
    def waiting(self) -> int:
        """Callers waiting for all the slots."""
        return self._whole_waiting

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Wait for ``n`` free slots (1 or :attr:`size`), hold them for the block."""
        whole, taken = n > 1, False
        try:
            with self._lock:
                self._whole_waiting += whole
                try:
                    while self._free < n or (not whole and self._whole_waiting):
                        self._cond.wait()
                finally:
                    self._whole_waiting -= whole
                self._free -= n
                self._held.n += n
                taken = True
            yield
        finally:
            if taken:  # a Ctrl-C anywhere after the count changed gives the slots back
                with self._lock:
                    self._free += n
                    self._held.n -= n
                    self._cond.notify_all()

    def held(self) -> bool:
        """Whether the calling thread holds slots (it is inside a pass)."""
        return self._held.n > 0

    def idle(self, timeout: float) -> bool:
        """Wait until no slot is held, at most ``timeout`` seconds -> whether none is."""
        with self._lock:
            return self._cond.wait_for(lambda: self._free == self.size, timeout)


class _Held(threading.local):
    """Slots the current thread holds."""

    n = 0


class LanesClosed(RuntimeError):
    """A bulk call's lanes were closed under it (the engine closed, or its lanes changed)."""


class Lanes(Generic[_I, _R]):
    """``count`` daemon threads with ``threads`` torch threads each, running ``fn(item,
    stop)`` on items (:meth:`map`); ``stop`` is set once the bulk call the item belongs to has
    ended early (its caller stopped iterating: an error, Ctrl-C) or the lanes close, and
    ``fn`` should then stop soon. :meth:`close` stops the threads. ``count`` is 0 when torch
    would not give a lane its own thread count here (then nothing runs in lanes)."""

    def __init__(self, count: int, threads: int, fn: Callable[[_I, threading.Event], _R],
                 timeout: float = 60.0) -> None:
        self.count, self.threads, self._fn = count, threads, fn
        #: The process the lane threads run in (a forked child has none of them).
        self.pid = os.getpid()
        #: The caller's thread count when the lanes started (the engine restarts them when it
        #: changes).
        self.total = torch.get_num_threads()
        self._jobs: queue.SimpleQueue[tuple[_I, Future[_R], threading.Event] | None] = (
            queue.SimpleQueue())
        self._lock = threading.Lock()
        self._closed = False
        #: The ``stop`` of each bulk call running (set by :meth:`close`).
        self._calls: set[threading.Event] = set()
        ready = threading.Barrier(count + 1)
        seen: list[int] = []
        self._lanes = [threading.Thread(target=self._lane, args=(ready, seen),
                                        name=f"smysl-lane-{i}", daemon=True)
                       for i in range(count)]
        # While lanes start, threads that start torch work get the lanes' count (torch's
        # process-wide default): starts are serialised, and the default is restored at once.
        with _STARTING:
            for t in self._lanes:
                t.start()
            try:
                ready.wait(timeout)  # every lane has taken its count
            except threading.BrokenBarrierError:
                seen.clear()
            torch.set_num_threads(self.total)
        if len(seen) != count or any(n != threads for n in seen):
            log.warning("lanes: torch did not give each lane %d thread(s) (they saw %s): bulk "
                        "calls run one batch at a time", threads, seen)
            self.close()
            self.count = 0

    def _lane(self, ready: threading.Barrier, seen: list[int]) -> None:
        try:
            torch.set_num_threads(self.threads)
            # the first parallel op of a thread applies torch's process-wide count to it: run
            # one now, while that count is still this lane's
            torch.ones(1 << 16).sum()
            seen.append(torch.get_num_threads())
            ready.wait()
        except BaseException:  # never leave the starting thread waiting
            ready.abort()
            return
        while (job := self._jobs.get()) is not None:
            item, future, stop = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._fn(item, stop))
            except BaseException as e:  # handed to the caller, which re-raises it
                future.set_exception(e)

    def map(self, items: Iterable[_I], whole: Callable[[_I], bool],
            alone: Callable[[_I], _R], ahead: int | None = None) -> Iterator[_R]:
        """Results for ``items`` in order: ``fn`` in the lanes, ``count`` at a time (at most
        ``ahead``, default twice ``count``, queued), except for items that ``whole`` picks:
        those run as ``alone(item)`` in the caller's thread once the lanes have drained. Items
        not started when the caller stops iterating are dropped, and those running are told
        to stop; :class:`LanesClosed` if the lanes close meanwhile."""
        if not self.count:
            raise LanesClosed("these lanes did not start")
        pending: deque[Future[_R]] = deque()
        limit = ahead or 2 * self.count
        stop = threading.Event()
        finished = False
        with self._lock:
            self._calls.add(stop)
        try:
            for item in items:
                if whole(item):
                    while pending:
                        yield _result(pending.popleft())
                    yield alone(item)
                    continue
                future: Future[_R] = Future()
                with self._lock:
                    if self._closed:
                        raise LanesClosed("the lanes were closed during a bulk call")
                    self._jobs.put((item, future, stop))  # ahead of close's stop marks: it runs
                pending.append(future)
                if len(pending) >= limit:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
            finished = True
        finally:
            with self._lock:
                self._calls.discard(stop)
            if not finished:  # an early end: nobody reads what runs or waits
                stop.set()
                for f in pending:
                    f.cancel()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the lanes: items not started are dropped (their callers get
        :class:`LanesClosed`), running ones are told to stop; wait for the threads (at most
        ``timeout`` seconds each, a Ctrl-C meanwhile raised after the wait): a lane thread
        still inside torch when the interpreter exits aborts the process. Nothing to stop in
        a forked child (it has no lane threads)."""
        if self.pid != os.getpid():
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for stop in self._calls:
                stop.set()
            with contextlib.suppress(queue.Empty):
                while (job := self._jobs.get_nowait()) is not None:
                    job[1].cancel()
            for _ in self._lanes:
                self._jobs.put(None)
        interrupted: KeyboardInterrupt | None = None
        for t in self._lanes:
            while t.is_alive() and t is not threading.current_thread():
                try:
                    t.join(timeout)
                    break
                except KeyboardInterrupt as e:  # joined still: a second Ctrl-C at exit
                    interrupted = e
        if interrupted is not None:
            raise interrupted


def _result(future: Future[_R]) -> _R:
    """A lane item's result; :class:`LanesClosed` for an item the lanes' close dropped."""
    try:
        return future.result()
    except CancelledError:
        raise LanesClosed("the lanes were closed during a bulk call") from None
