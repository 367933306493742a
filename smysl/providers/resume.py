"""Rows already paid for, kept when an ``embed`` call fails part-way (issue 11 item 9a).

A provider object keeps the rows a failed call did finish, keyed by the text as sent and the
``truncate`` flag; the next call with those texts takes them from here instead of paying for
them again, and a call that succeeds drops the rows it used. So a job that fails on one
sub-batch is resumed by calling ``embed`` again, and only the missing inputs are sent. Bounded
in bytes (oldest rows go first); in memory only, one store per provider object.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

Key = tuple[str, bool]


class ResumeStore:
    """Rows of failed calls, at most ``max_bytes`` of them. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._rows: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def take(self, texts: list[str], truncate: bool, out: np.ndarray,
             done: np.ndarray) -> list[Key]:
        """Fill ``out[i]`` and set ``done[i]`` for every text held; returns the keys used."""
        used: list[Key] = []
        with self._lock:
            if not self._rows:
                return used
            for i, text in enumerate(texts):
                row = self._rows.get((text, truncate))
                if row is not None and row.shape[0] == out.shape[1]:
                    out[i] = row
                    done[i] = True
                    used.append((text, truncate))
        return used

    def keep(self, texts: list[str], truncate: bool, rows: np.ndarray, done: np.ndarray) -> None:
        """Hold the rows of ``texts`` marked ``done`` (a call that is about to fail)."""
        with self._lock:
            for i in np.flatnonzero(done):
                key = (texts[i], truncate)
                if key in self._rows:
                    self._rows.move_to_end(key)
                    continue
                row = rows[i].copy()
                self._rows[key] = row
                self._bytes += row.nbytes
            while self._bytes > self.max_bytes and self._rows:
                _, old = self._rows.popitem(last=False)
                self._bytes -= old.nbytes

    def drop(self, keys: list[Key]) -> None:
        """Forget rows a successful call has used."""
        with self._lock:
            for key in keys:
                row = self._rows.pop(key, None)
                if row is not None:
                    self._bytes -= row.nbytes
