"""Token, request and cost accounting for one provider object (:class:`Usage`)."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Usage:
    """Running totals for one provider object: tokens, requests, retries and cost.

    Cost is tokens x ``price_per_mtok`` / 1M plus answered requests x ``price_per_request``
    (APIs billed per run). ``tokens`` sums what the provider reported where it did and the
    local Qwen3 count elsewhere (``counted_tokens``); ``estimated_tokens`` is the part that
    could only be bounded (no tokenizer available). ``requests``, ``texts`` and ``tokens`` count
    every answer the provider bills: a 2xx answer whose rows are then refused (and the request
    retried) counts as well as the answer that replaces it. Thread-safe; ``str()`` is a one-line
    report.
    """

    provider: str
    model: str
    price_per_mtok: float | None = None
    price_per_request: float | None = None
    texts: int = 0
    tokens: int = 0
    reported_tokens: int = 0
    counted_tokens: int = 0
    estimated_tokens: int = 0
    requests: int = 0
    retries: int = 0
    failed_requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def cost(self) -> float | None:
        """USD spent so far, or None when no price is known."""
        if self.price_per_mtok is None and self.price_per_request is None:
            return None
        return (self.tokens * (self.price_per_mtok or 0.0) / 1_000_000
                + self.requests * (self.price_per_request or 0.0))

    def record(self, *, texts: int, reported: int | None, counted: int | None,
               estimated: int | None) -> None:
        with self._lock:
            self.texts += texts
            self.requests += 1
            if reported is not None:
                self.reported_tokens += reported
                self.tokens += reported
            elif counted is not None:
                self.counted_tokens += counted
                self.tokens += counted
            elif estimated is not None:
                self.estimated_tokens += estimated
                self.tokens += estimated

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_failure(self) -> None:
        with self._lock:
            self.failed_requests += 1

    def snapshot(self) -> dict[str, Any]:
        """Plain totals (for logs, JSON, metrics)."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if not f.name.startswith("_")}
        out["cost"] = self.cost
        return out

    def add(self, counts: Mapping[str, int]) -> None:
        """Add another usage's :data:`COUNTS` (a snapshot, or what one grew by: a Ray
        actor's share of a call), under the lock as every record is."""
        with self._lock:
            for name in COUNTS:
                setattr(self, name, getattr(self, name) + int(counts.get(name) or 0))

    def reset(self) -> None:
        with self._lock:
            for name in COUNTS:
                setattr(self, name, 0)

    def __str__(self) -> str:
        s = self.snapshot()
        approx = "≤" if s["estimated_tokens"] else ""
        source = ("provider-reported" if s["tokens"] == s["reported_tokens"]
                  else "counted locally" if not s["reported_tokens"] else "reported+counted")
        rates = [f"${p:g}/{unit}" for p, unit in ((self.price_per_mtok, "1M tokens"),
                                                  (self.price_per_request, "request"))
                 if p is not None]
        cost = (f"${s['cost']:.6f} at {' + '.join(rates)}"
                if s["cost"] is not None else "cost unknown (no price)")
        failed = f", {s['failed_requests']} failed" if s["failed_requests"] else ""
        return (f"{self.provider}:{self.model}: "
                f"{approx}{count_of(s['tokens'], 'token')} ({source}), "
                f"{count_of(s['texts'], 'text')}, {count_of(s['requests'], 'request')}, "
                f"{count_of(s['retries'], 'retry', 'retries')}{failed}, {cost}")


#: The counters of :class:`Usage` (its other fields name the provider and its prices).
COUNTS = ("texts", "tokens", "reported_tokens", "counted_tokens", "estimated_tokens",
          "requests", "retries", "failed_requests")


def reported_count(value: Any) -> int | None:
    """A count an API reported (tokens, search units): a non-negative integer, or a float that
    is one (``12.0``: JSON has one number type and some servers send counts as floats); None when
    absent or not a count, and the caller falls back to its own count. A bad count never makes a
    good answer fail: the rows are what was paid for."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= 0 else None


def count_of(count: int, one: str, many: str | None = None) -> str:
    """``1 token``, ``2,048 tokens``: a count with its noun (``many`` for irregular plurals)."""
    return f"{count:,} {one if count == 1 else many or one + 's'}"
