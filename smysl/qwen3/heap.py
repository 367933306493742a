"""glibc heap settings around the engine (a no-op without glibc).

Two opposite needs, both measured (docs/benchmarks.md):

* **Loading** quantised layers one at a time frees a float buffer per layer while the int8/int4
  layers it made stay. With glibc's adaptive mmap threshold (it rises to 32 MB after the first
  big free) those buffers land in the heap between long-lived blocks and are never returned:
  the 8B's int8 load peaked at 14.8 GB instead of 9.4 GB. :func:`loading` serves every
  allocation over 1 MiB with its own mapping while a model loads.
* **Serving**: :func:`keep_heap` stops glibc from handing activations back to the OS after
  every forward pass (~9,000 fresh page faults per batch in the server's load test, 0.65-0.83 s
  of system time in 8.4 s of compute; 0.02 s with fixed thresholds).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The steady state: allocations up to 32 MB from the heap (the adaptive threshold's own
#: ceiling), up to 256 MB of freed memory kept for the next batch.
_MMAP_BYTES, _TRIM_BYTES = 32 << 20, 256 << 20
_LOADING_MMAP_BYTES = 1 << 20


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):
        return False


def keep_heap() -> None:
    """Fixed thresholds for a process that runs forward passes (the engine process)."""
    if not (_mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES) and _mallopt(_M_TRIM_THRESHOLD,
                                                                    _TRIM_BYTES)):
        log.debug("mallopt unavailable; the allocator keeps its defaults")


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Allocations over 1 MiB mapped on their own while loading (freed ones go back to the
    OS at once); afterwards the 32 MB threshold glibc's adaptive one ends at anyway."""
    _mallopt(_M_MMAP_THRESHOLD, _LOADING_MMAP_BYTES)
    try:
        yield
    finally:
        _mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES)
