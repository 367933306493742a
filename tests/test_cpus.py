"""The CPUs this process may use (``smysl.cpus``): affinity and a container's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smysl import cpus


@pytest.fixture
def cgroups(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fake cgroup mount and /proc/self/cgroup, on a machine of 64 CPUs."""
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path / "fs")
    monkeypatch.setattr(cpus, "PROC_CGROUP", tmp_path / "proc-cgroup")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    (tmp_path / "fs").mkdir()
    return tmp_path


def test_no_cgroup_files_leave_the_affinity(cgroups: Path) -> None:
    assert cpus.cgroup_cpus() is None and cpus.usable_cpus() == 64


def test_a_v2_quota_in_a_containers_own_namespace(cgroups: Path) -> None:
    """``docker run --cpus 2.5``: cgroup namespace, path "/", the quota at the mount's root;
    rounded up (two threads under a 1.5-CPU quota beat one by 37%, docs/benchmarks.md)."""
    (cgroups / "proc-cgroup").write_text("0::/\n")
    (cgroups / "fs" / "cpu.max").write_text("max 100000\n")
    assert cpus.usable_cpus() == 64
    (cgroups / "fs" / "cpu.max").write_text("250000 100000\n")
    assert cpus.cgroup_cpus() == 2.5 and cpus.usable_cpus() == 3
    (cgroups / "fs" / "cpu.max").write_text("400000 100000\n")
    assert cpus.usable_cpus() == 4
    (cgroups / "fs" / "cpu.max").write_text("50000 100000\n")  # half a CPU: one
    assert cpus.usable_cpus() == 1


def test_the_tightest_quota_of_the_cgroup_and_its_ancestors(cgroups: Path) -> None:
    """Kubernetes sets a pod's limit on the pod's cgroup, a level above the container's."""
    (cgroups / "proc-cgroup").write_text("0::/kubepods/pod1/ctr\n")
    pod = cgroups / "fs" / "kubepods" / "pod1"
    (pod / "ctr").mkdir(parents=True)
    (pod / "ctr" / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.max").write_text("400000 100000\n")
    (cgroups / "fs" / "kubepods" / "cpu.max").write_text("1600000 100000\n")
    assert cpus.cgroup_cpus() == 4.0 and cpus.usable_cpus() == 4


def test_a_v1_quota(cgroups: Path) -> None:
    (cgroups / "proc-cgroup").write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    v1 = cgroups / "fs" / "cpu,cpuacct"  # the container sees its own cgroup at the root
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpus() is None
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    assert cpus.usable_cpus() == 3


def test_the_affinity_below_the_quota_wins(cgroups: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (cgroups / "proc-cgroup").write_text("0::/\n")
    (cgroups / "fs" / "cpu.max").write_text("800000 100000\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpus.usable_cpus() == 2


def test_unreadable_files_are_no_quota(cgroups: Path) -> None:
    (cgroups / "proc-cgroup").write_text("garbage\n0::/\n")
    (cgroups / "fs" / "cpu.max").write_text("lots 100000\n")
    assert cpus.cgroup_cpus() is None and cpus.usable_cpus() == 64
