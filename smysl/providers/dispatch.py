"""Sending one ``embed`` call's batches: in order on one thread, or a few at a time, and
stopping at the first failure so that a call that will raise anyway spends no more (the rows of
batches that did finish are kept by the caller for a resume); and the batch size that 413
answers teach (:class:`BatchLimit`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from smysl.base import Progress


class BatchLimit:
    """Most inputs per request as 413 answers teach it: one per provider object, thread-safe.

    A 413 says the batch is too large or that one input in it is (TEI answers an over-long input
    with 413), and only splitting tells which. So a call's 413s halve the size for the rest of
    that call at once (:class:`CallLimit`), while the object keeps the smaller size for later
    calls only once a request within it went through, and not when the call found an input
    refused even on its own: that input explains the 413s, and one bad text must not cut every
    later call to one text per request.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()

    def call(self) -> CallLimit:
        """The limit of one call, starting from what earlier calls learned."""
        return CallLimit(self)

    def keep(self, size: int) -> None:
        with self._lock:
            self.size = min(self.size, size)


class CallLimit:
    """The batch size within one call: :meth:`refused` halves it, :meth:`passed` records that
    a request within a halved size went through, :meth:`finish` tells the object."""

    def __init__(self, shared: BatchLimit) -> None:
        self.shared = shared
        self.start = self.size = shared.size
        self._learned: int | None = None
        #: An input was refused on its own: it explains this call's 413s, whatever error
        #: ends the call (another batch's 5xx may come first).
        self._alone = False
        self._lock = threading.Lock()

    def refused(self, n: int) -> None:
        """A request of ``n`` inputs got 413: at most half of them per request from now on
        (one input alone: that input is what the server refuses)."""
        with self._lock:
            if n == 1:
                self._alone = True
            self.size = max(1, min(self.size, (n + 1) // 2))

    def passed(self, n: int) -> None:
        """A request of ``n`` inputs went through."""
        with self._lock:
            if self.size < self.start and n <= self.size:
                self._learned = self.size

    def finish(self) -> None:
        """The call ended: later calls keep the size learned, unless an input refused on its
        own explains the 413s."""
        if self._learned is not None and not self._alone:
            self.shared.keep(self._learned)


def run_batches(batches: list[list[int]], send: Callable[[list[int]], None], *, workers: int,
                thread_name: str, progress: Progress | None = None) -> BaseException | None:
    """Call ``send(batch)`` for each batch, ``workers`` at a time (one: in order, inline).

    Returns the first error, or None when every batch succeeded; after an error no new batch
    starts, and batches already running finish. ``progress`` counts finished inputs.
    """
    if workers <= 1:
        for batch in batches:
            try:
                send(batch)
            except Exception as e:
                return e
            if progress is not None:
                progress.update(len(batch))
        return None
    first_error: BaseException | None = None
    ex = ThreadPoolExecutor(workers, thread_name_prefix=thread_name)
    try:
        futures: dict[Future[None], list[int]] = {ex.submit(send, b): b for b in batches}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                err = fut.exception()
                if err is None:
                    if progress is not None:
                        progress.update(len(futures[fut]))
                    continue
                first_error = first_error or err
            if first_error is not None:
                # Stop spending on a job that will raise anyway; running requests finish.
                for fut in pending:
                    fut.cancel()
                wait(pending)
                break
    finally:
        # Ctrl-C or any error: queued batches are dropped, not sent.
        ex.shutdown(wait=True, cancel_futures=True)
    return first_error
