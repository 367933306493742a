"""Sending one ``embed`` call's batches: in order on one thread, or a few at a time, and
stopping at the first failure so that a call that will raise anyway spends no more."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from smysl.base import Progress


def run_batches(batches: list[list[int]], send: Callable[[list[int]], None], *, workers: int,
                thread_name: str, progress: Progress | None = None,
                ) -> tuple[list[int], BaseException | None]:
    """Call ``send(batch)`` for each batch, ``workers`` at a time (one: in order, inline).

    Returns the input positions left unembedded (unsorted, possibly repeated) and the first
    error, or ``([], None)`` when every batch succeeded. ``progress`` counts finished inputs.
    """
    failed: list[int] = []
    first_error: BaseException | None = None
    if workers <= 1:
        for k, batch in enumerate(batches):
            try:
                send(batch)
            except Exception as e:
                first_error = e
                failed = [i for b in batches[k:] for i in b]
                break
            if progress is not None:
                progress.update(len(batch))
        return failed, first_error
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
                failed.extend(futures[fut])
            if first_error is not None:
                # Stop spending on a job that will raise anyway; running requests finish.
                for fut in pending:
                    if fut.cancel():
                        failed.extend(futures[fut])
                for fut in wait(pending).done:
                    if not fut.cancelled() and fut.exception() is not None:
                        failed.extend(futures[fut])
                break
    finally:
        # Ctrl-C or any error: queued batches are dropped, not sent.
        ex.shutdown(wait=True, cancel_futures=True)
    return failed, first_error
