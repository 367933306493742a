"""The CPUs this process may use: its affinity, capped by a container's CPU quota.

One rule for everything that sizes itself by CPUs: torch's default thread count on CPU
(:func:`smysl.qwen3.tuning.fit_threads`), the tuning file's key, and ``smysl serve --workers
auto`` (:func:`smysl.server.workers.auto_workers`). No torch here: the server's supervisor
runs without it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Where the cgroup file systems are mounted, and this process's cgroups (tests move them).
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus() -> int:
    """CPUs this process may use: its affinity (``taskset``, a cpuset), capped by a cgroup CPU
    quota (``docker run --cpus``, a Kubernetes CPU limit), which neither affinity nor
    ``os.cpu_count`` shows: threads beyond the quota wait on each other at every throttled
    period (Ollama's default threads lose ~45x that way, ollama#17916). A fractional quota is
    rounded up: under a 1.5-CPU quota two torch threads ran the 0.6B 37% faster than one (one
    leaves the half unused), under 1.0 one ran 4% faster than two (docs/benchmarks.md). How
    many torch threads an engine on CPU starts by default, and ``smysl serve --workers auto``
    counts with it."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpus()
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def cgroup_cpus() -> float | None:
    """The tightest CPU quota, in CPUs, of this process's cgroup and its ancestors (cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a Kubernetes pod sets one a
    level above its container's); None without one, or off Linux."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        lines = []
    # "0::/path" (v2) and "4:cpu,cpuacct:/path" (v1); in a container with its own cgroup
    # namespace the path is "/", without one the host's (not mounted here: the root is tried)
    paths = {line.split(":", 2)[2].strip("/") for line in lines if line.count(":") >= 2
             and (line.split(":")[1] == "" or "cpu" in line.split(":")[1].split(","))}
    found: list[float] = []
    for mount in (CGROUP_ROOT, CGROUP_ROOT / "cpu", CGROUP_ROOT / "cpu,cpuacct"):
        for path in paths | {""}:
            folder = mount / path if path else mount
            while True:
                quota = _quota(folder)
                if quota is not None:
                    found.append(quota)
                if folder == mount or mount not in folder.parents:
                    break
                folder = folder.parent
    return min(found) if found else None


def _quota(folder: Path) -> float | None:
    """One cgroup folder's CPU quota in CPUs, None where it sets none."""
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (folder / "cpu.cfs_quota_us").is_file():
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
            return None if int(quota) <= 0 else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    return None
