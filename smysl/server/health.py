"""A served model backend's health (the embedding model's, the reranker's): polled for the life
of the app, each outage logged and counted, the 503 while it is down, and how long it has been
down (``serve`` exits once that passes ``unhealthy_exit_s``)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from smysl.server.errors import ApiError
from smysl.server.metrics import HealthMetrics

log = logging.getLogger("smysl.server")

#: How often a backend's health is polled (seconds), and the Retry-After of a 503 while it is
#: down before any recovery was measured.
POLL_S = 0.25
DOWN_RETRY_S = 5.0
#: ``unhealthy_exit_s="auto"``: how long a local backend (an engine process, which restarts
#: itself up to 3 times a minute first) may stay down before ``serve`` exits.
LOCAL_EXIT_S = 60.0


def exit_after(setting: float | str | None, remote: bool) -> float | None:
    """Seconds a backend may stay down before ``serve`` exits, None for never:
    ``unhealthy_exit_s`` as set, or for ``"auto"`` :data:`LOCAL_EXIT_S` for a local backend
    and never for a remote API (restarting smysl does not bring an upstream back; ``/health``
    shows the outage meanwhile)."""
    if setting == "auto":
        return None if remote else LOCAL_EXIT_S
    return None if setting is None else float(setting)


class BackendHealth:
    """One backend's ``healthy``, watched. ``what`` names it in logs and errors ("the model
    backend of 'x'"); ``remote``: an upstream API (it comes back on its own) rather than an
    engine process (which restarts itself); ``unhealthy_exit_s``: the server's setting of
    that name."""

    def __init__(self, what: str, healthy: Callable[[], bool], metrics: HealthMetrics, *,
                 remote: bool, unhealthy_exit_s: float | str | None = None) -> None:
        self.what, self._healthy, self.metrics, self.remote = what, healthy, metrics, remote
        #: Seconds down after which ``serve`` exits (:func:`exit_after`), None for never.
        self.exit_after_s = exit_after(unhealthy_exit_s, remote)
        #: When the backend went down (``time.monotonic``), None while it is up; and how long
        #: its last outage lasted (for Retry-After).
        self.down_since: float | None = None
        self.last_downtime: float | None = None
        #: Whether this process logs and counts the outages: one HTTP worker of several
        #: does (they share one engine process, and ``/metrics`` sums the workers' counts:
        #: an outage was counted, and logged, once per worker).
        self.announces = True

    def check(self) -> bool:
        """Poll the backend once: log and count a change. Returns whether it is healthy."""
        healthy = self._healthy()
        now = time.monotonic()
        if not healthy and self.down_since is None:
            self.down_since = now
            self.metrics.up.set(0)
            if self.announces:
                self.metrics.down.inc()
                log.error("%s is down; its requests get 503 until it is back", self.what)
        elif healthy and self.down_since is not None:
            self.last_downtime = now - self.down_since
            self.down_since = None
            self.metrics.up.set(1)
            if self.announces:
                self.metrics.recovered.inc()
                self.metrics.downtime.observe(self.last_downtime)
                log.warning("%s is back after %.1f s", self.what, self.last_downtime)
        return healthy

    def down_for(self) -> float:
        """Seconds the backend has been down without a break (0 while it is healthy)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def unavailable(self) -> ApiError:
        """The documented 503 while the backend is down, with a Retry-After from the last
        measured outage."""
        expected = self.last_downtime or DOWN_RETRY_S
        down = self.down_for()
        retry = max(1, math.ceil(expected - down))
        why = ("its upstream API does not answer" if self.remote
               else "an engine process that exited restarts itself")
        said = f"{self.what} is down ({why}); retry shortly"
        if self.exit_after_s is not None and down > expected:
            # down past what an outage (a restart) lasts: the engine may have stopped for good
            # (its restarts spent); said was "restarts itself; retry shortly" with Retry-After
            # 1 until the exit
            left = max(0.0, self.exit_after_s - down)
            said = (f"{self.what} has been down for {down:.0f} s; unless it is back within "
                    f"{left:.0f} s the server exits for its supervisor to restart it; retry "
                    "later")
            retry = max(1, math.ceil(left))
        return ApiError("unavailable", said, headers={"Retry-After": str(retry)})

    async def watch(self) -> None:
        """Poll for the life of the app (the app's lifespan runs it)."""
        while True:
            self.check()
            await asyncio.sleep(POLL_S)
