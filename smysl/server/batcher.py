"""Dynamic batching: inputs from many requests coalesce into token-budget batches, fairly.

Handlers append jobs to a bounded queue; a dedicated compute thread builds each batch from the
queue, drops jobs whose client has gone or whose time budget ran out and starts the backend on
it; two finisher threads wait for the started batches' rows and post each finished job's
rows back to its event loop. Neither waits for the event loop, which keeps accepting,
parsing and answering requests while the model computes. How many batches are in flight is
the backend's (:attr:`BatchBackend.queues`): one on CPU (the pass computes in the engine's
thread, or its engine process);
on a CUDA engine one more, queued behind the running one; on an engine process that merges
what arrives while it computes (CUDA, ``--workers``), each batch is started the moment it can
be taken, while those in flight are under one token budget: held back behind a batch in
flight, a request waited for that batch's rows and then for a pass of its own.

Fairness: a job larger than one batch budget is cut into slices (runs of its inputs within the
budget), and each batch takes at most one slice of it. Jobs that fit one batch go first, in
arrival order; large jobs share what is left round-robin, and after two batches in a row that
left them nothing, the next large job goes first (so none starves). So a short request
waits for at most the batches in flight (one, on CUDA two, or a budget's worth), never for a
large request to finish. One input is never split: an input longer than the budget is a
forward pass of its own, and while one runs, batches within the budget still start (a CPU
engine runs them between its layers: :meth:`Batcher._room_locked`).

Each job's dimensions and normalisation are applied by :func:`smysl.pooling.finish`, as
:meth:`smysl.base.BaseEmbedder.embed` applies them; the engine is batch-invariant, so slicing does
not change a single bit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
import numpy as np

from smysl.base import BaseEmbedder, Pending
from smysl.pooling import NonFiniteError, finish
from smysl.server.errors import ApiError, shutting_down
from smysl.server.metrics import BatchMetrics

_T = TypeVar("_T")
log = logging.getLogger(__name__)

#: Requests with more characters (texts) or tokens (token ids) than this are tokenised,
#: checked or decoded in a thread, off the event loop (:meth:`Batcher.prepare`).
INLINE_SIZE = 4096
#: After this many batches in a row with no slice of any waiting large job, one goes first.
_STARVED = 2
#: The longest Retry-After a 429 says (seconds).
RETRY_AFTER_MAX_S = 3600
#: Batches the drain rate (tokens per second, for Retry-After) is measured over.
_RATE_WINDOW = 32
#: Finisher threads (:meth:`Batcher._work`).
_FINISHERS = 2


@dataclass(eq=False)
class Job:
    """One request's inputs, waiting for compute.

    ``key`` decides which jobs may share a backend call: ``("ids",)`` jobs carry token ids
    already prepared by the service (any such jobs share batches: options are applied per job
    afterwards); ``("text", truncate)`` jobs carry formatted texts for backends without token
    ids (providers, sentence-transformers), which tokenise inside ``_embed``. ``lengths`` are the
    tokens of each item (estimates for text backends that cannot count). ``disconnected`` is
    an awaitable factory that completes when the client goes away (see
    :func:`smysl.server.service.until_disconnected`); such a job is dropped before compute.
    ``timeout_s`` is the job's time budget from the request's arrival (its :class:`Slot`'s;
    without one, from enqueueing): past it the handler answers ``timeout`` and the compute
    thread abandons the rest of the job.
    """

    key: tuple[Hashable, ...]
    items: list[Any]
    lengths: list[int]
    dimensions: int
    normalize: bool = True
    disconnected: Callable[[], Awaitable[object]] | None = None
    timeout_s: float | None = None
    future: asyncio.Future[np.ndarray] = field(init=False)
    loop: asyncio.AbstractEventLoop = field(init=False)
    enqueued: float = field(init=False, default=0.0)
    deadline: float = field(init=False, default=math.inf)
    #: Set on the event loop, read by the compute thread: the handler was cancelled / the
    #: client disconnected / the time budget ran out. Plain flags, so the compute thread never
    #: waits for the loop.
    cancelled: bool = field(init=False, default=False)
    gone: bool = field(init=False, default=False)
    expired: bool = field(init=False, default=False)
    queue_s: float = 0.0
    compute_s: float = 0.0
    # compute threads' state: items handed to batches so far, tokens not yet handed (the compute
    # thread's, under the lock), raw rows (the finisher's)
    taken: int = field(init=False, default=0)
    left: int = field(init=False, default=0)
    started: bool = field(init=False, default=False)
    raw: np.ndarray | None = field(init=False, default=None)
    computed: int = field(init=False, default=0)
    failed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if len(self.lengths) != len(self.items):
            raise ValueError("a job needs one token length per item")
        self.left = sum(self.lengths)

    @property
    def abandoned(self) -> bool:
        """Nobody waits for the job's rows: cancelled, its client gone, its time budget
        spent, or answered with an error already."""
        return (self.cancelled or self.gone or self.expired or self.failed
                or self.future.done())

    @property
    def next_length(self) -> int:
        """Tokens of the next item not yet handed to a batch (0: none left)."""
        return self.lengths[self.taken] if self.taken < len(self.items) else 0


class BackendDown(RuntimeError):
    """A batch failed while the backend reported itself unhealthy (checked at once, in the
    compute thread: a restarted engine may be healthy again by the time the handler looks)."""


def _timeout(job: Job) -> ApiError:
    return ApiError("timeout", f"the request did not finish within the server's time budget "
                    f"of {job.timeout_s:g} s per request (request_timeout_s); send fewer or "
                    "shorter inputs per request")


@dataclass(frozen=True)
class Slice:
    """Items ``start:stop`` of a job, computed in one batch."""

    job: Job
    start: int
    stop: int

    @property
    def items(self) -> list[Any]:
        return self.job.items[self.start : self.stop]


class BatchBackend(Protocol):
    """What a :class:`Batcher` computes with (the embedder's :class:`EmbedBackend`, the
    reranker's in :mod:`smysl.server.rerank_routes`)."""

    @property
    def healthy(self) -> bool: ...

    @property
    def queues(self) -> int:
        """How many batches may be started behind the one whose rows are awaited: 0 when the
        next would only wait for it (CPU, where a pass uses every thread; a generic backend,
        whose :meth:`start` computes the rows); 1 when it returns once they are queued (a
        CUDA engine: the batcher takes and starts the next batch while one runs); more for an
        engine process, which merges what arrives while it computes (the batcher then starts
        each batch at once while those in flight are under one token budget)."""
        ...

    def start(self, key: tuple[Hashable, ...], items: list[Any]) -> Pending:
        """Start one batch's items (all jobs share ``key``); the returned call waits for their
        raw rows ``[len(items), width]``. ``ValueError`` (from either) means bad input: the
        batch is retried job by job. Its ``cancel()``: nobody waits for the rows any more."""
        ...


class EmbedBackend:
    """An embedder's raw (unnormalised) pooled rows of the native size."""

    def __init__(self, embedder: BaseEmbedder) -> None:
        self.embedder = embedder
        self.tokens = embedder.token_level()

    @property
    def healthy(self) -> bool:
        return self.embedder.healthy

    @property
    def queues(self) -> int:
        return self.tokens.queues if self.tokens is not None else 0

    def start(self, key: tuple[Hashable, ...], items: list[Any]) -> Pending:
        if key[0] == "ids":
            if self.tokens is None:
                raise RuntimeError("token-id job for a backend without token ids")
            return self.tokens.start_prepared(items)
        rows = self.embedder.embed_formatted(items, truncate=bool(key[1]))  # computed now
        return Pending(lambda: rows)


class Slot:
    """A request's place in the queue while it is tokenised (:meth:`Batcher.admitted`), and
    when it arrived: its time budget counts from then (a request that waited 30 s for a
    tokenizer thread answered 200 on a 5 s budget)."""

    released = False

    def __init__(self) -> None:
        self.arrived = time.perf_counter()


class Batcher:
    """Coalesces :class:`Job` s into fair backend calls; bounded queue, graceful close."""

    def __init__(self, backend: BatchBackend, metrics: BatchMetrics, *, max_batch_tokens: int,
                 max_batch_requests: int, max_wait_s: float, max_queue: int) -> None:
        self.backend = backend
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        #: Jobs with items not yet handed to a batch, in arrival order (large ones rotate).
        self._pending: deque[Job] = deque()
        lock = threading.RLock()
        #: Guards ``_pending``, ``_closing``, ``_inflight``, ``_started`` and ``_recent``; the
        #: compute thread sleeps on it (for jobs, or room for another batch).
        self._cond = threading.Condition(lock)
        #: On the same lock: the finisher threads sleep on it until a batch has started (each
        #: thread woken only for what it waits for: a wake-up of both on every request cost
        #: ~5% of a busy HTTP process's GIL time).
        self._ready = threading.Condition(lock)
        self._closing = False
        #: Tokens of the batches being computed (still ahead of a new request).
        self._inflight = 0
        #: Batches started, rows not yet posted, oldest first (the finisher threads' work).
        self._started: deque[Started] = deque()
        #: The compute thread is taking batches (the finishers stop once it is not and
        #: nothing is in flight).
        self._taking = False
        #: Requests admitted (:meth:`admitted`) and being tokenised, not yet queued: they count
        #: against ``max_queue`` as queued ones do.
        self._preparing = 0
        #: Batches in a row that left the waiting large jobs nothing (see ``_take``).
        self._starved = 0
        # One compute thread takes and starts batches, finisher threads read and post them.
        self._thread: threading.Thread | None = None
        #: (tokens, seconds) of recent batches: the measured drain rate, for Retry-After.
        self._recent: deque[tuple[int, float]] = deque(maxlen=_RATE_WINDOW)
        #: When the last batch's rows were ready (``time.perf_counter``; on the lock).
        self._last_end = 0.0
        #: The finishers keep rows in their jobs and post them one at a time.
        self._posting = threading.Lock()

    # ------------------------------------------------------------------ public
    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def healthy(self) -> bool:
        return not self._closing and (self._thread is None or self._thread.is_alive())

    def open(self) -> None:
        """(Re)open for work: the app's startup calls it, so an app survives a restart."""
        with self._cond:
            self._closing = False
        self.start()

    def start(self) -> None:
        """Start the compute thread (idempotent; ``submit`` calls it too)."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="smysl-compute",
                                                daemon=True)
                self._thread.start()

    @contextlib.contextmanager
    def admitted(self, continuing: bool = False) -> Iterator[Slot]:
        """A place in the queue from a request's arrival until :meth:`submit` queues its job
        (or the request fails first): raises the 429 of a full queue or the 503 of a closing
        server at once. Requests being tokenised count: a burst of large ones all passed a
        check of the queue alone, waited their turn to be tokenised, and were refused only
        then, seconds later (p50 4.2 s for 150 clients on a queue of 2). ``continuing``: a
        later piece of a request already admitted (Ollama's, in pieces) keeps its place
        (a 429 after its first pieces were computed threw them away); only closing refuses."""
        slot = Slot()
        with self._cond:
            if continuing and self._closing:
                raise shutting_down()
            if not continuing:
                self._check_room_locked()
            self._preparing += 1
        try:
            yield slot
        finally:
            self._release(slot)

    def _release(self, slot: Slot) -> None:
        with self._cond:
            self._release_locked(slot)

    def _release_locked(self, slot: Slot) -> bool:
        """Give ``slot``'s place back (once); whether it still held one."""
        if slot.released:
            return False
        slot.released = True
        self._preparing -= 1
        return True

    async def submit(self, job: Job, slot: Slot | None = None) -> np.ndarray:
        """Queue ``job`` and wait for its rows. Raises :class:`ApiError` 429 when the queue is
        full (unless ``slot``, from :meth:`admitted`, holds its place), 503 while shutting down
        and ``timeout`` when the job's time budget runs out."""
        if slot is None:
            self.check_room()
        self.start()
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._cond:
            if self._closing:  # closed since the check above (the thread may have exited)
                raise shutting_down()
            # the slot's place becomes the job's; without one, the queue must have room
            if not (slot is not None and self._release_locked(slot)):
                self._check_room_locked()
            job.enqueued = time.perf_counter()
            if job.timeout_s is not None:
                job.deadline = (slot.arrived if slot is not None else job.enqueued
                                ) + job.timeout_s
                if job.deadline <= job.enqueued:  # spent while it was tokenised
                    self.metrics.dropped.labels("timeout").inc()
                    raise _timeout(job)
            self._pending.append(job)
            depth = len(self._pending)
            self._cond.notify()  # the compute thread
        self.metrics.queue_depth.set(depth)
        watcher = None
        if job.disconnected is not None:
            watcher = job.loop.create_task(self._watch(job, job.disconnected))
        timer = None
        if job.timeout_s is not None:
            timer = job.loop.call_at(job.loop.time() + job.deadline - time.perf_counter(),
                                     self._expire, job)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            self._abandoned()
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            if timer is not None:
                timer.cancel()

    async def prepare(self, run: Callable[[], _T], size: int, limiter: anyio.CapacityLimiter,
                      slot: Slot, budget: float | None) -> _T:
        """``run()`` (tokenising, checking or decoding a request of ``size`` characters or
        tokens) for the request holding ``slot``: inline up to :data:`INLINE_SIZE`, else in a
        thread of ``limiter`` (a large one on the event loop would stall every other client).
        504 once its time budget (``budget`` seconds from its arrival; None: none) is spent
        waiting for a thread, counted as a timeout; a thread that has started is waited for."""
        if size <= INLINE_SIZE:
            return run()
        wait = math.inf if not budget else max(0.0, slot.arrived + budget - time.perf_counter())
        # move_on_after, not fail_after: a TimeoutError of run()'s own (a socket's) is its
        with anyio.move_on_after(wait) as scope:
            return await anyio.to_thread.run_sync(run, limiter=limiter)
        assert scope.cancelled_caught
        self.metrics.dropped.labels("timeout").inc()
        raise ApiError("timeout", f"the request waited for a tokenizer thread past the "
                       f"server's time budget of {budget:g} s per request "
                       "(request_timeout_s): the server is busy with other requests; retry "
                       "later")

    def check_room(self) -> None:
        """Raise the 503 of a closing server or the 429 of a full queue, if either applies."""
        with self._cond:
            self._check_room_locked()

    def _check_room_locked(self) -> None:
        if self._closing:
            raise shutting_down()
        if len(self._pending) + self._preparing >= self.max_queue:
            raise self._overloaded()

    def _overloaded(self) -> ApiError:
        retry = self._retry_after_locked()
        waiting = len(self._pending) + self._preparing
        return ApiError("overloaded", f"the server is overloaded ({waiting} requests "
                        f"queued); retry after {retry} s", headers={"Retry-After": str(retry)})

    def _retry_after_locked(self) -> int:
        """Seconds until the work queued now has likely drained (at least 1): what the
        batches running now have left, then the queued tokens at the drain rate measured on
        recent batches. A running batch past what that rate gives it (a long document's pass,
        or any on a server that has measured nothing yet) is taken to need as long again: a
        429 said 2 s where the queue had room after 25 s."""
        queued = sum(j.left for j in self._pending)
        # batches the queue takes at least: full token budgets, or full request counts
        batches = max(math.ceil(queued / self.max_batch_tokens),
                      math.ceil(len(self._pending) / self.max_batch_requests))
        per_batch, per_token = batch_cost(self._recent)
        if per_batch <= 0 and per_token <= 0:  # nothing measured yet: assume 50 ms a batch
            per_batch = 0.05
        now = time.perf_counter()
        running = 0.0
        for started in self._started:
            if not started.done:
                cost, spent = per_batch + per_token * started.tokens, now - started.at
                # a cancelled one stops at its next layer: no "as long again" for it
                over = 0.0 if started.cancelled else spent
                running = max(running, cost - spent if cost > spent else over)
        # at most an hour: a client told more would give up on this server anyway
        return max(1, min(math.ceil(running + batches * per_batch + queued * per_token),
                          RETRY_AFTER_MAX_S))

    def abort(self) -> None:
        """Stop now (a forced stop): take no more jobs, answer the queued ones with the 503
        of a shutdown, and leave the batch being computed unwaited for (the compute thread
        is a daemon, and ends after it)."""
        with self._cond:  # emptied with the flag set: the thread starts no batch of these
            self._closing = True
            queued = [job for job in self._pending if not job.failed]
            for job in queued:
                job.failed = True
            self._pending.clear()
            self._cond.notify_all()
            self._ready.notify_all()
        self._post([(job, shutting_down()) for job in queued])

    async def close(self) -> None:
        """Stop taking jobs, finish the queued ones, stop the compute thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self._ready.notify_all()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    # ------------------------------------------------------------------ event loop side
    async def _watch(self, job: Job, disconnected: Callable[[], Awaitable[object]]) -> None:
        try:
            await disconnected()
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken connection is a gone client
            pass
        job.gone = True
        self._abandoned()

    def _expire(self, job: Job) -> None:
        """The job's time budget ran out: answer it now; the compute thread drops the rest."""
        if not job.future.done():
            job.expired = True
            job.future.set_exception(_timeout(job))
            self._abandoned()

    def _abandoned(self) -> None:
        """A job's answer has nobody to go to any more: the compute thread looks whether a
        batch in flight still holds work anyone waits for (:meth:`_cancels_due`)."""
        with self._cond:
            if any(s.cancel is not None for s in self._started):
                self._cond.notify()

    @staticmethod
    def _deliver(results: list[tuple[Job, np.ndarray | BaseException]]) -> None:
        for job, result in results:
            if job.future.done():  # cancelled meanwhile
                continue
            try:
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            except Exception as e:  # e.g. asyncio refuses StopIteration: still answer the job
                job.future.set_exception(RuntimeError(f"backend error: {result!r} ({e})"))

    # ------------------------------------------------------------------ compute threads
    def _work(self) -> None:
        """The compute thread: take batches and start them, as many at a time as the backend
        takes (:meth:`_room_locked`), until closed and drained; finisher threads wait for
        the started batches' rows and post them (:meth:`_finish_all`). So the device is not
        idle while rows are posted, and with an engine process that merges batches (on CUDA)
        a request goes out the moment it is queued, not after the rows of a batch in
        flight. Two finishers: a short batch run between the layers of a long one's pass
        is posted when its rows come, not after the long one's."""
        with self._cond:
            self._taking = True
        finishers = [threading.Thread(target=self._finish_all, name="smysl-finish",
                                      daemon=True) for _ in range(_FINISHERS)]
        for f in finishers:
            f.start()
        try:
            self._take_all()
        finally:
            with self._cond:
                self._taking = False
                self._ready.notify_all()
            for f in finishers:
                f.join()

    def _take_all(self) -> None:
        while True:
            dropped: list[tuple[Job, BaseException]] = []
            cancels: list[Callable[[], None]] = []
            with self._cond:
                while True:
                    dropped += self._drop_gone()
                    cancels += self._cancels_due()
                    largest = self._room_locked()
                    if not largest or not any(j.next_length <= largest for j in self._pending):
                        if dropped or cancels:
                            break
                        if self._closing and not self._pending:
                            return
                        self._cond.wait()
                        continue
                    # Let an idle-time arrival wait briefly for companions; jobs that queued
                    # behind a running batch have waited already and go at once.
                    delay = self._pending[0].enqueued + self.max_wait_s - time.perf_counter()
                    if (not self._started and delay > 0 and not self._closing
                            and not self._full()):
                        self._cond.wait(delay)
                        continue
                    break
                largest = self._room_locked()
                batch = self._take(largest) if self._pending and largest else []
                self._inflight += _tokens(batch)
                depth = len(self._pending)
            self._post(dropped)
            for cancel in cancels:  # outside the lock: it may write to an engine's pipe
                try:
                    cancel()
                except Exception as e:  # a hint: the batch's rows come, or fail, as ever
                    log.warning("cancelling a batch nobody waits for failed: %s", e)
            self.metrics.queue_depth.set(depth)
            if not batch:
                continue
            try:
                started = self._start(batch)
            except BaseException as e:  # never leave a taken job unanswered
                self._fail([(s.job, e) for s in batch])
                with self._cond:
                    self._inflight -= _tokens(batch)
                if not isinstance(e, Exception):
                    raise
                continue
            with self._cond:
                self._started.append(started)
                self._ready.notify()

    def _room_locked(self) -> float:
        """The longest input another batch may hold now (0: none may start). How many batches
        may be in flight is the backend's (:attr:`BatchBackend.queues`): one at a time when
        starting computes it; one more behind it when the backend queues; more while the
        batches in flight are under one token budget when it merges them. While a batch of
        one input over the budget runs, batches within the budget start as long as their
        tokens in flight are under one budget: a CPU engine runs them between its layers
        (:mod:`smysl.qwen3.passes` in this process, :class:`smysl.qwen3.worker._Hub` in an
        engine process), so a short request waits for one layer of a long document, not for
        all of it (a second long input waits: queued behind the first, it would hold them
        up); elsewhere they wait behind it as they would here."""
        n, inflight, ahead = len(self._started), self._inflight, self.backend.queues
        if n <= min(ahead, 1) or (n <= ahead and inflight < self.max_batch_tokens):
            return math.inf
        long = next((s for s in self._started if s.long), None)
        if long is None:
            return 0
        # beside it, batches within one budget in flight: the engine process takes what has
        # arrived at the next layer's end, merged (one at a time, a request that came while
        # one waited for that layer waited for the next too)
        return self.max_batch_tokens if inflight - long.tokens < self.max_batch_tokens else 0

    def _finish_all(self) -> None:
        """A finisher thread: the oldest started batch no other finisher waits for, its rows
        posted; until the compute thread has stopped and nothing is left to wait for."""
        while True:
            with self._cond:
                while (started := next((s for s in self._started if not s.claimed),
                                       None)) is None:
                    if not self._taking:
                        return
                    self._ready.wait()
                started.claimed = True
            try:
                self._finish(started)
            except BaseException as e:  # never leave a started job unanswered
                self._fail([(s.job, e) for s in started.batch])
                if not started.read:  # an engine process answers in turn: read its rows
                    with contextlib.suppress(BaseException):
                        started.rows()
            finally:
                with self._cond:
                    self._started.remove(started)
                    self._inflight -= started.tokens
                    self._cond.notify()  # room for the compute thread

    def _full(self) -> bool:
        return (len(self._pending) >= self.max_batch_requests
                or sum(j.left for j in self._pending) >= self.max_batch_tokens)

    def _cancels_due(self) -> list[Callable[[], None]]:
        """The cancel calls of batches in flight whose jobs nobody waits for any more (under
        the lock; each batch's once): a long input's pass on a CPU engine stops at its next
        layer instead of running minutes for a client that has gone."""
        due: list[Callable[[], None]] = []
        for s in self._started:
            if (s.cancel is not None and not s.done
                    and all(x.job.abandoned for x in s.batch)):
                due.append(s.cancel)
                s.cancel = None
        return due

    def _drop_gone(self) -> list[tuple[Job, BaseException]]:
        """Remove jobs that no longer need compute (under the lock); their answers to post."""
        now = time.perf_counter()
        keep: deque[Job] = deque()
        gone: list[tuple[Job, BaseException]] = []
        for job in self._pending:
            if job.cancelled or job.future.cancelled():
                self.metrics.dropped.labels("cancelled").inc()
            elif job.gone:
                self.metrics.dropped.labels("disconnected").inc()
                # an exception, not cancel(): the handler was not cancelled and should end
                # normally (its answer just has no one to go to)
                gone.append((job, ApiError("client_gone",
                                           "the client disconnected before compute")))
            elif job.expired or now > job.deadline:
                # the handler answers the timeout itself; this only stops the work
                self.metrics.dropped.labels("timeout").inc()
                gone.append((job, _timeout(job)))
            else:
                keep.append(job)
        self._pending = keep
        return gone

    def _take(self, largest: float = math.inf) -> list[Slice]:
        """One batch (under the lock): jobs that fit whole in arrival order, then slices of large
        jobs round-robin (the first large job leads when they starved); one key, within the
        budgets. An input over the budget goes alone, and only when ``largest``
        (:meth:`_room_locked`) allows it."""
        budget = self.max_batch_tokens
        large = [j for j in self._pending if j.left > budget]  # in round-robin order
        small = [j for j in self._pending if j.left <= budget]
        if large and self._starved >= _STARVED:
            order = large[:1] + small + large[1:]
        else:
            order = small + large
        lead = next((j for j in order if j.next_length <= largest), None)
        if lead is None:
            return []
        key = lead.key
        batch: list[Slice] = []
        tokens = 0
        for job in order:
            if len(batch) >= self.max_batch_requests:
                break
            if job.key != key:
                continue
            room, stop = budget - tokens, job.taken
            if job.left <= budget:  # a job that fits one batch goes whole or waits (it is first)
                if job.left > room:
                    continue
                stop = len(job.items)
            else:  # the next inputs of a large job that fit; one, however long, if alone
                while stop < len(job.items) and (
                        job.lengths[stop] <= room
                        or (not batch and stop == job.taken and job.lengths[stop] <= largest)):
                    room -= job.lengths[stop]
                    stop += 1
                if stop == job.taken:
                    continue
            n = sum(job.lengths[job.taken : stop])
            batch.append(Slice(job, job.taken, stop))
            tokens += n
            job.taken, job.left = stop, job.left - n
        got_large = any(s.job in large for s in batch)
        self._starved = 0 if got_large or not large else self._starved + 1
        # jobs handed out whole leave the queue; a large job's next slice waits at the back
        rest = [j for j in self._pending if j.taken < len(j.items)]
        sliced = [s.job for s in batch if s.job.taken < len(s.job.items)]
        self._pending = deque([j for j in rest if j not in sliced] + sliced)
        return batch

    def _fail(self, results: Sequence[tuple[Job, BaseException]]) -> None:
        """Answer failed jobs once and stop their remaining slices."""
        out = []
        for job, e in results:
            if not job.failed:
                job.failed = True
                out.append((job, e))
        with self._cond:
            self._pending = deque(j for j in self._pending if not j.failed)
        self._post(out)

    def _post(self, results: Sequence[tuple[Job, np.ndarray | BaseException]]) -> None:
        """Hand results to their event loops: one wake-up per loop, not one per job."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = {}
        for job, result in results:
            by_loop.setdefault(job.loop, []).append((job, result))
        for loop, part in by_loop.items():
            # a closed loop has nobody waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, part)

    def _start(self, batch: list[Slice]) -> Started:
        """Start one batch on the backend (its jobs' queue time ends here)."""
        start = time.perf_counter()
        for s in batch:
            if not s.job.started:
                s.job.started = True
                s.job.queue_s = start - s.job.enqueued
                self.metrics.queue_seconds.observe(s.job.queue_s)
        tokens = _tokens(batch)
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_inputs.observe(sum(s.stop - s.start for s in batch))
        self.metrics.batch_tokens.observe(tokens)
        long = tokens > self.max_batch_tokens and len(batch) == 1 == batch[0].stop - batch[0].start
        rows, cancel = self._compute(batch)
        return Started(batch, tokens, start, rows, cancel, long)

    def _finish(self, started: Started) -> None:
        """Wait for a started batch's rows; post the jobs it completed or failed."""
        batch = started.batch
        started.read = True
        results = started.rows()
        end = time.perf_counter()
        # the backend's time for this batch, as its requests saw it: from its start to its
        # rows (with batches in flight together, a pass queued ahead of it included)
        elapsed = end - started.at
        self.metrics.compute_seconds.observe(elapsed)
        # the drain rate counts each stretch of backend time once: from its start, or from
        # the rows of the batch before (batches an engine process merged into one pass end
        # together: the first takes the pass's time, the others ~0; the fit averages them)
        with self._cond:
            started.done = True  # nothing to cancel any more (:meth:`_cancels_due`)
            # a cancelled one stopped early, or never ran: no measure of the drain; a long
            # one, its whole pass (the batches beside it ended within it)
            if not started.cancelled:
                self._recent.append((started.tokens, elapsed if started.long
                                     else end - max(started.at, self._last_end)))
            self._last_end = max(end, self._last_end)
        if started.cancelled:  # the backend's error says only that we cancelled it
            results = [r if not isinstance(r, BaseException) else _unwanted(s.job, r)
                       for s, r in zip(batch, results, strict=True)]
        with self._posting:  # the other finisher may post another slice of the same job
            self._post_rows(batch, results, elapsed)

    def _post_rows(self, batch: list[Slice], results: list[np.ndarray | BaseException],
                   elapsed: float) -> None:
        """Keep a finished batch's rows in their jobs; post the jobs it completed or
        failed."""
        done: list[tuple[Job, np.ndarray | BaseException]] = []
        failed: list[tuple[Job, BaseException]] = []
        for s, result in zip(batch, results, strict=True):
            job = s.job
            job.compute_s += elapsed
            if job.failed:
                continue
            if isinstance(result, BaseException):
                failed.append((job, result))
                continue
            if job.raw is None:
                job.raw = np.empty((len(job.items), result.shape[1]), dtype=np.float32)
            job.raw[s.start : s.stop] = result
            job.computed += s.stop - s.start
            self.metrics.inputs.inc(s.stop - s.start)
            self.metrics.tokens.inc(sum(job.lengths[s.start : s.stop]))
            if job.computed == len(job.items):
                try:
                    done.append((job, finish(job.raw, job.dimensions, normalize=job.normalize)))
                except NonFiniteError as e:  # this request's failure, not the batch's
                    failed.append((job, e))
                job.raw = None
        if failed:
            self._fail(failed)
        self._post(done)

    def _compute(self, batch: list[Slice]) -> tuple[
            Callable[[], list[np.ndarray | BaseException]], Callable[[], None]]:
        """Start the backend on the union of the batch's slices -> (the call that waits for
        the raw rows, split per slice (or each slice's error); the call that cancels it)."""
        try:
            wait = Pending.of(self.backend.start(batch[0].job.key,
                                                 [x for s in batch for x in s.items]))
        except Exception as e:
            failure = self._failure(batch, e)
            return (lambda: failure), _nothing

        def rows() -> list[np.ndarray | BaseException]:
            try:
                raw = wait()
            except Exception as e:
                return self._failure(batch, e)
            out: list[np.ndarray | BaseException] = []
            offset = 0
            for s in batch:
                out.append(raw[offset : offset + s.stop - s.start])
                offset += s.stop - s.start
            return out

        return rows, wait.cancel

    def _failure(self, batch: list[Slice], e: Exception) -> list[np.ndarray | BaseException]:
        """What each slice of a failed batch gets: bad input is retried slice by slice, so the
        error lands on the job that caused it (one job's over-long input or bad token id must
        not fail the others); any other failure is every slice's."""
        if isinstance(e, ValueError):
            if len(batch) == 1:
                return [e]
            return [self._compute([s])[0]()[0] for s in batch]
        err: Exception = e if self.backend.healthy else BackendDown(str(e))
        return [err for _ in batch]


@dataclass(eq=False)
class Started:
    """A batch started on the backend, rows not yet posted."""

    batch: list[Slice]
    tokens: int
    #: When it was started (``time.perf_counter``).
    at: float
    #: Waits for the rows, split per slice (or each slice's error).
    rows: Callable[[], list[np.ndarray | BaseException]]
    #: Asks the backend to stop it (:meth:`Batcher._cancels_due`); None once called.
    cancel: Callable[[], None] | None
    #: One input over the batch budget (:meth:`Batcher._room_locked`).
    long: bool = False
    #: A finisher waits for it.
    claimed: bool = False
    #: Its rows (or error) came back (under the batcher's lock).
    done: bool = False
    #: :attr:`rows` was called (by :meth:`Batcher._finish`).
    read: bool = False

    @property
    def cancelled(self) -> bool:
        """Cancelled: nobody waited for its jobs any more (its :attr:`cancel` was called)."""
        return self.cancel is None


def _nothing() -> None:
    pass


def _unwanted(job: Job, error: BaseException) -> BaseException:
    """What a job of a batch cancelled for want of anyone to answer gets, for the backend's
    ``error``: a client gone, the 499 it would have had before compute (its handler is still
    waiting, and would log the backend's error as internal); a time budget spent, its
    timeout (answered already); otherwise the error."""
    if job.gone:
        return ApiError("client_gone", "the client disconnected before its rows were computed")
    if job.expired:
        return _timeout(job)
    return error


def _tokens(batch: Sequence[Slice]) -> int:
    return sum(sum(s.job.lengths[s.start : s.stop]) for s in batch)


def batch_cost(recent: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(seconds per batch, seconds per token) fitted to recent (tokens, seconds) batches.

    A batch costs a fixed overhead plus a per-token part; tokens over seconds alone mistakes
    the overhead of the small batches of a quiet moment for a slow drain (on a small model
    Retry-After read 2x the real wait). Least squares, both parts kept non-negative; with one
    batch size measured, the plain ratio.
    """
    if not recent:
        return 0.0, 0.0
    t = np.array([r[0] for r in recent], np.float64)
    s = np.array([r[1] for r in recent], np.float64)
    if np.ptp(t) > 0:
        per_token, per_batch = np.polyfit(t, s, 1)
        if per_token >= 0 and per_batch >= 0:
            return float(per_batch), float(per_token)
        if per_token < 0:  # noise: all overhead
            return float(s.mean()), 0.0
        return 0.0, float(s.sum() / t.sum())  # negative intercept: all per token
    return 0.0, float(s.sum() / max(t.sum(), 1.0))
