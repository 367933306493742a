"""Fake engines that record their passes: a CPU one whose long passes advance a layer at a
time, when a test lets them (the base, :class:`RecordingEngine`, serves other fakes too)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class RecordingEngine:
    """An engine's ``forward`` over its ``submit``, and the events its passes record (each
    keyed by its sequences' first ids), which a test waits for with :meth:`until`."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[int, ...]]] = []
        self.changed = threading.Condition()

    def submit(self, batch: list[list[int]], heads: list[int] | None = None) -> Any:
        raise NotImplementedError

    def forward(self, batch: list[list[int]], heads: list[int] | None = None) -> np.ndarray:
        return self.submit(batch, heads)()  # type: ignore[no-any-return]

    def _record(self, event: tuple[str, tuple[int, ...]]) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def until(self, event: tuple[str, tuple[int, ...]]) -> None:
        """Wait (10 s at most) until ``event`` has happened."""
        with self.changed:
            assert self.changed.wait_for(lambda: event in self.events, 10), self.events


class LayeredCpuEngine(RecordingEngine):
    """A CPU engine whose pass with ``between`` runs ``layers`` layers, each once the test
    lets it (:meth:`step`), calling ``between`` after each; a pass without it runs at once."""

    device, queues = "cpu", 0

    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.layers = layers
        self._steps = threading.Semaphore(0)

    def step(self) -> None:
        self._steps.release()

    def submit(self, batch: list[list[int]], heads: list[int] | None = None,
               between: Any = None) -> Any:
        key = tuple(s[0] for s in batch)
        self._record(("launch", key))
        if between is not None:
            for _ in range(self.layers):
                assert self._steps.acquire(timeout=10)
                between()
        rows = np.array([[s[0], len(s)] for s in batch], dtype=np.float32)
        self._record(("done", key))
        return lambda: rows
