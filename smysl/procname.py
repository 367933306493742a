"""Names for smysl's processes, as ``ps -o comm``, ``top`` and ``/proc/PID/comm`` show them.

Every process of ``smysl serve`` is ``python`` otherwise; an operator looking at a busy core,
or ``benchmarks/server_cpu.py`` sharing out CPU time, needs to tell the engine process from
the HTTP workers. Linux only (``prctl(PR_SET_NAME)``); a no-op elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

#: A process that runs forward passes for others (:mod:`smysl.qwen3.worker`).
ENGINE = "smysl-engine"
#: One of ``smysl serve --workers N``'s HTTP processes (:mod:`smysl.server.workers`).
HTTP_WORKER = "smysl-http"

_PR_SET_NAME = 15


def set_name(name: str) -> None:
    """Name the calling thread (the process, when called from the main thread); Linux keeps
    the first 15 bytes."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # no prctl: the name stays python
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
