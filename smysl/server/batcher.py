"""Dynamic batching: inputs from many requests coalesce into token-budget batches.

Handlers append jobs to a bounded queue; a dedicated compute thread takes the oldest job plus
later jobs with the same batch key (within the token and request budgets), drops jobs whose
client has gone, runs the backend, and posts each job's rows back to its event loop. The thread
pulls the next batch the moment the previous one ends: it never waits for the event loop, which
keeps accepting, parsing and answering requests while the model computes. Each job's dimensions
and normalisation are applied by :func:`smysl.pooling.finish`, as
:meth:`smysl.base.BaseEmbedder.embed` applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder
from smysl.pooling import finish
from smysl.server.errors import ApiError
from smysl.server.metrics import Metrics


@dataclass(eq=False)
class Job:
    """One request's inputs, waiting for compute.

    ``key`` decides which jobs may share a backend call: ``("ids",)`` jobs carry token ids
    already prepared by the service (any such jobs share batches: options are applied per job
    afterwards); ``("text", truncate)`` jobs carry formatted texts for backends without token
    ids (providers, sentence-transformers), which tokenise inside ``_embed``. ``disconnected`` is an
    awaitable factory that completes when the client goes away (see
    :func:`smysl.server.service.until_disconnected`); such a job is dropped before compute.
    """

    key: tuple[Hashable, ...]
    items: list[Any]
    tokens: int
    dimensions: int
    normalize: bool = True
    disconnected: Callable[[], Awaitable[object]] | None = None
    future: asyncio.Future[np.ndarray] = field(init=False)
    loop: asyncio.AbstractEventLoop = field(init=False)
    enqueued: float = field(init=False, default=0.0)
    #: Set on the event loop, read by the compute thread: the handler was cancelled / the
    #: client disconnected. Plain flags, so the compute thread never waits for the loop.
    cancelled: bool = field(init=False, default=False)
    gone: bool = field(init=False, default=False)
    queue_s: float = 0.0
    compute_s: float = 0.0


class Batcher:
    """Coalesces :class:`Job` s into backend calls; bounded queue, graceful close."""

    def __init__(self, embedder: BaseEmbedder, metrics: Metrics, *, max_batch_tokens: int,
                 max_batch_requests: int, max_wait_s: float, max_queue: int) -> None:
        self.embedder = embedder
        self.tokens = embedder.token_level()
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        #: Guards ``_pending`` and ``_closing``; the compute thread sleeps on it when idle.
        self._cond = threading.Condition()
        self._closing = False
        # One compute thread: the backends serialise forward passes anyway, and one thread keeps
        # batches in arrival order.
        self._thread: threading.Thread | None = None
        #: Smoothed seconds per batch, for Retry-After.
        self._batch_s = 0.05

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

    async def submit(self, job: Job) -> np.ndarray:
        """Queue ``job`` and wait for its rows. Raises :class:`ApiError` 429 when the queue is
        full and 503 while shutting down."""
        if self._closing:
            raise ApiError("shutting_down", "the server is shutting down; retry elsewhere")
        self.start()
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._cond:
            if self._closing:  # closed since the check above (the thread may have exited)
                raise ApiError("shutting_down", "the server is shutting down; retry elsewhere")
            if len(self._pending) >= self.max_queue:
                retry = self.retry_after()
                raise ApiError("overloaded",
                               f"the server is overloaded ({len(self._pending)} requests queued);"
                               f" retry after {retry} s", headers={"Retry-After": str(retry)})
            job.enqueued = time.perf_counter()
            self._pending.append(job)
            depth = len(self._pending)
            self._cond.notify()
        self.metrics.queue_depth.set(depth)
        watcher = None
        if job.disconnected is not None:
            watcher = job.loop.create_task(self._watch(job, job.disconnected))
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        batches = len(self._pending) / max(1, self.max_batch_requests) + 1
        return max(1, math.ceil(batches * self._batch_s))

    async def close(self) -> None:
        """Stop taking jobs, finish the queued ones, stop the compute thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    # ------------------------------------------------------------------ event loop side
    @staticmethod
    async def _watch(job: Job, disconnected: Callable[[], Awaitable[object]]) -> None:
        try:
            await disconnected()
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken connection is a gone client
            pass
        job.gone = True

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

    # ------------------------------------------------------------------ compute thread
    def _work(self) -> None:
        """The compute thread: take a batch, drop gone jobs, compute, post rows; until closed
        and drained."""
        while True:
            with self._cond:
                while True:
                    if not self._pending:
                        if self._closing:
                            return
                        self._cond.wait()
                        continue
                    # Let an idle-time arrival wait briefly for companions; jobs that queued
                    # behind a running batch have waited already and go at once.
                    delay = self._pending[0].enqueued + self.max_wait_s - time.perf_counter()
                    if delay > 0 and not self._closing and not self._full():
                        self._cond.wait(delay)
                        continue
                    break
                batch = self._take()
                depth = len(self._pending)
            try:
                self.metrics.queue_depth.set(depth)
                batch = self._drop_gone(batch)
                if batch:
                    self._run(batch)
            except BaseException as e:  # never leave a taken job unanswered
                self._post([(job, e) for job in batch])
                if not isinstance(e, Exception):
                    raise

    def _full(self) -> bool:
        return (len(self._pending) >= self.max_batch_requests
                or sum(j.tokens for j in self._pending) >= self.max_batch_tokens)

    def _take(self) -> list[Job]:
        """The oldest job plus later jobs with its key, within the token and request budgets."""
        first = self._pending.popleft()
        batch, tokens, rest = [first], first.tokens, deque[Job]()
        while self._pending:
            job = self._pending.popleft()
            if (job.key == first.key and len(batch) < self.max_batch_requests
                    and tokens + job.tokens <= self.max_batch_tokens):
                batch.append(job)
                tokens += job.tokens
            else:
                rest.append(job)
                if len(batch) >= self.max_batch_requests:
                    break
        rest.extend(self._pending)
        self._pending = rest
        return batch

    def _drop_gone(self, batch: list[Job]) -> list[Job]:
        """Jobs whose handler was cancelled or whose client disconnected are not computed."""
        keep: list[Job] = []
        gone: list[tuple[Job, BaseException]] = []
        for job in batch:
            if job.cancelled:
                self.metrics.dropped.labels("cancelled").inc()
            elif job.gone:
                self.metrics.dropped.labels("disconnected").inc()
                # an exception, not cancel(): the handler was not cancelled and should end
                # normally (its answer just has no one to go to)
                gone.append((job, ApiError("client_gone",
                                           "the client disconnected before compute")))
            else:
                keep.append(job)
        if gone:
            self._post(gone)
        return keep

    def _post(self, results: Sequence[tuple[Job, np.ndarray | BaseException]]) -> None:
        """Hand results to their event loops: one wake-up per loop, not one per job."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = {}
        for job, result in results:
            by_loop.setdefault(job.loop, []).append((job, result))
        for loop, part in by_loop.items():
            # a closed loop has nobody waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, part)

    def _run(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.queue_s = start - job.enqueued
            self.metrics.queue_seconds.observe(job.queue_s)
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_inputs.observe(sum(len(j.items) for j in batch))
        self.metrics.batch_tokens.observe(sum(j.tokens for j in batch))
        results = self._compute(batch)
        elapsed = time.perf_counter() - start
        self.metrics.compute_seconds.observe(elapsed)
        self._batch_s = 0.8 * self._batch_s + 0.2 * elapsed
        for job, result in zip(batch, results, strict=True):
            job.compute_s = elapsed
            if not isinstance(result, BaseException):
                self.metrics.inputs.inc(len(job.items))
                self.metrics.tokens.inc(job.tokens)
        self._post(list(zip(batch, results, strict=True)))

    def _compute(self, batch: list[Job]) -> list[np.ndarray | BaseException]:
        """Backend call on the union of the batch's inputs; split and post-process per job."""
        try:
            raw = self._backend(batch[0].key, [x for j in batch for x in j.items])
        except ValueError as e:
            if len(batch) == 1:
                return [e]
            # One job's bad input (over-long, bad token id) must not fail the others: run each
            # alone so the error lands on the job that caused it.
            return [self._compute([job])[0] for job in batch]
        except Exception as e:
            return [e for _ in batch]
        out: list[np.ndarray | BaseException] = []
        offset = 0
        for job in batch:
            rows = raw[offset : offset + len(job.items)]
            offset += len(job.items)
            out.append(finish(rows, job.dimensions, normalize=job.normalize))
        return out

    def _backend(self, key: tuple[Hashable, ...], items: list[Any]) -> np.ndarray:
        """Raw (unnormalised) rows of the native size for the union of the batch's inputs."""
        if key[0] == "ids":
            if self.tokens is None:
                raise RuntimeError("token-id job for a backend without token ids")
            return self.tokens.embed_prepared(items)
        return self.embedder.embed_formatted(items, truncate=bool(key[1]))
