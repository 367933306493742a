"""Dynamic batching: inputs from many requests coalesce into token-budget batches.

One asyncio task owns the queue. It takes the oldest job, adds later jobs with the same batch
key until the token or request budget is full, drops jobs whose client has gone, and runs the
backend in a single dedicated thread, so the event loop keeps accepting and answering requests
while the model computes. Rows come back split per job; each job's dimensions and normalisation
are applied exactly as :meth:`smysl.base.BaseEmbedder.embed` applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder
from smysl.pooling import l2_normalize, truncate_dimensions
from smysl.server.errors import ApiError
from smysl.server.metrics import Metrics


@dataclass(eq=False)
class Job:
    """One request's inputs, waiting for compute.

    ``key`` decides which jobs may share a backend call: ``("text", truncate)`` jobs carry
    formatted texts for ``_embed``; ``("ids", dimensions, truncate)`` jobs carry token ids for
    ``embed_token_ids`` (which applies dimensions itself, hence the key).
    """

    key: tuple[Hashable, ...]
    items: list[Any]
    tokens: int
    dimensions: int
    normalize: bool = True
    is_disconnected: Callable[[], Awaitable[bool]] | None = None
    future: asyncio.Future[np.ndarray] = field(init=False)
    enqueued: float = field(init=False, default=0.0)
    queue_s: float = 0.0
    compute_s: float = 0.0


class Batcher:
    """Coalesces :class:`Job` s into backend calls; bounded queue, graceful close."""

    def __init__(self, embedder: BaseEmbedder, metrics: Metrics, *, max_batch_tokens: int,
                 max_batch_requests: int, max_wait_s: float, max_queue: int) -> None:
        self.embedder = embedder
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # One compute thread: the backends serialise forward passes anyway, and one thread keeps
        # batches in arrival order.
        self._executor: ThreadPoolExecutor | None = None
        #: Smoothed seconds per batch, for Retry-After.
        self._batch_s = 0.05

    # ------------------------------------------------------------------ public
    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def healthy(self) -> bool:
        return not self._closing and (self._task is None or not self._task.done())

    def open(self) -> None:
        """(Re)open for work: the app's startup calls it, so an app survives a restart."""
        self._closing = False
        self.start()

    def start(self) -> None:
        """Start the batching task on the running loop (idempotent; ``submit`` calls it too)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="smysl-compute")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="smysl-batcher")

    async def submit(self, job: Job) -> np.ndarray:
        """Queue ``job`` and wait for its rows. Raises :class:`ApiError` 429 when the queue is
        full and 503 while shutting down."""
        if self._closing:
            raise ApiError("shutting_down", "the server is shutting down; retry elsewhere")
        self.start()
        if len(self._pending) >= self.max_queue:
            retry = self.retry_after()
            raise ApiError("overloaded",
                           f"the server is overloaded ({len(self._pending)} requests queued); "
                           f"retry after {retry} s", headers={"Retry-After": str(retry)})
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        job.enqueued = time.perf_counter()
        self._pending.append(job)
        self.metrics.queue_depth.set(len(self._pending))
        assert self._wake is not None
        self._wake.set()
        return await job.future

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        batches = len(self._pending) / max(1, self.max_batch_requests) + 1
        return max(1, math.ceil(batches * self._batch_s))

    async def close(self) -> None:
        """Stop taking jobs, finish the queued ones, stop the task and the compute thread."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ loop
    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # Let an idle-time arrival wait briefly for companions; jobs that queued behind a
            # running batch have waited already and go at once.
            delay = self._pending[0].enqueued + self.max_wait_s - time.perf_counter()
            if delay > 0 and not self._closing and not self._full():
                await asyncio.sleep(delay)
            batch = self._take()
            self.metrics.queue_depth.set(len(self._pending))
            batch = await self._drop_gone(batch)
            if batch:
                try:
                    await self._run(batch)
                except Exception as e:  # never let one batch take the loop down
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(e)

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

    async def _drop_gone(self, batch: list[Job]) -> list[Job]:
        """Jobs whose handler was cancelled or whose client disconnected are not computed."""
        keep = []
        for job in batch:
            if job.future.done():  # the handler was cancelled while queued
                self.metrics.dropped.labels("cancelled").inc()
                continue
            if job.is_disconnected is not None:
                try:
                    gone = await job.is_disconnected()
                except Exception:  # a broken connection is a gone client
                    gone = True
                if gone:
                    self.metrics.dropped.labels("disconnected").inc()
                    # an exception, not cancel(): the handler was not cancelled and should end
                    # normally (its answer just has no one to go to)
                    job.future.set_exception(
                        ApiError("client_gone", "the client disconnected before compute"))
                    continue
            keep.append(job)
        return keep

    async def _run(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        for job in batch:
            job.queue_s = start - job.enqueued
            self.metrics.queue_seconds.observe(job.queue_s)
        n_inputs = sum(len(j.items) for j in batch)
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_inputs.observe(n_inputs)
        self.metrics.batch_tokens.observe(sum(j.tokens for j in batch))
        results = await loop.run_in_executor(self._executor, self._compute, batch)
        elapsed = time.perf_counter() - start
        self.metrics.compute_seconds.observe(elapsed)
        self._batch_s = 0.8 * self._batch_s + 0.2 * elapsed
        for job, result in zip(batch, results, strict=True):
            job.compute_s = elapsed
            if job.future.done():  # cancelled while computing
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                self.metrics.inputs.inc(len(job.items))
                self.metrics.tokens.inc(job.tokens)
                job.future.set_result(result)

    # ------------------------------------------------------------------ compute thread
    def _compute(self, batch: list[Job]) -> list[np.ndarray | BaseException]:
        """Backend call on the union of the batch's inputs; split and post-process per job."""
        try:
            raw = self._backend(batch[0].key, [x for j in batch for x in j.items],
                                batch[0].dimensions)
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
            out.append(self._finish(job, rows))
        return out

    def _backend(self, key: tuple[Hashable, ...], items: list[Any], dims: int) -> np.ndarray:
        emb = self.embedder
        if key[0] == "text":
            raw = np.asarray(emb._embed(items, truncate=bool(key[1])), dtype=np.float32)
            if raw.shape != (len(items), emb.dimensions):
                raise RuntimeError(f"backend returned shape {raw.shape}, "
                                   f"expected {(len(items), emb.dimensions)}")
            return raw
        # token ids: only backends with a tokenizer have this (checked before queueing)
        fn = emb.embed_token_ids  # type: ignore[attr-defined]
        return np.asarray(fn(items, dimensions=dims, truncate=bool(key[2])), dtype=np.float32)

    def _finish(self, job: Job, rows: np.ndarray) -> np.ndarray:
        if job.key[0] != "text":
            return rows  # embed_token_ids already applied dimensions and normalisation
        if not job.normalize:
            return rows[:, : job.dimensions]
        # exactly BaseEmbedder.embed's post-processing, so served vectors equal embed()'s
        native = self.embedder.dimensions
        return (truncate_dimensions(rows, job.dimensions) if job.dimensions != native
                else l2_normalize(rows))
