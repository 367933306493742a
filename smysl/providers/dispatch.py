"""Sending one ``embed`` call's batches: in order on one thread, or a few at a time, and
stopping at the first failure so that a call that will raise anyway spends no more (the rows of
batches that did finish are kept by the caller for a resume)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from smysl.base import Progress


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
