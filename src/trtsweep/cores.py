"""The core budget: which CPUs this process may use, and how many.

Every CPU engine's thread count defaults to the same budget (the top-level ``threads``), so engines
are compared at equal core budgets.  The budget respects CPU affinity (``taskset``, SLURM, Docker
``--cpuset-cpus``) and a cgroup CPU quota (Docker ``--cpus``, Kubernetes limits), not just
``os.cpu_count()``.  The trial worker is pinned to the first ``threads`` cores of the allowed set.
"""

from __future__ import annotations

import math
import os
from contextlib import suppress
from functools import lru_cache
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def allowed_cores() -> list[int]:
    """CPUs this process may run on (its affinity mask), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _own_cgroup_dirs() -> list[Path]:
    """This process's cgroup directory and its ancestors (a quota anywhere up the tree limits us)."""
    dirs: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "" or "cpu" in controllers.split(","):  # v2 unified, or v1 cpu controller
            base = _CGROUP_ROOT if controllers == "" else _CGROUP_ROOT / "cpu"
            if not base.exists() and controllers != "":
                base = _CGROUP_ROOT / "cpu,cpuacct"
            p = base / rel.lstrip("/")
            while True:
                dirs.append(p)
                if p == base or p.parent == p:
                    break
                p = p.parent
    return dirs


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` ("200000 100000" → 2.0 CPUs; "max 100000" → no limit)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit() -> float | None:
    """The tightest CPU quota over this process's cgroups, in CPUs, or None when there is none."""
    limits = []
    for d in _own_cgroup_dirs():
        try:
            limit = parse_cpu_max((d / "cpu.max").read_text())
        except (OSError, ValueError):
            try:  # cgroup v1
                quota = int((d / "cpu.cfs_quota_us").read_text())
                period = int((d / "cpu.cfs_period_us").read_text())
                limit = quota / period if quota > 0 and period > 0 else None
            except (OSError, ValueError):
                limit = None
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


@lru_cache(maxsize=1)
def core_budget() -> int:
    """How many cores a trial may use: the affinity mask, capped by a cgroup quota (rounded up)."""
    n = len(allowed_cores())
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def core_set(threads: int) -> list[int]:
    """The cores a trial with ``threads`` threads is pinned to: the first ``threads`` allowed cores
    (all of them when it asks for more: oversubscription is the user's explicit choice)."""
    cores = allowed_cores()[: core_budget()]
    return cores[: max(1, min(threads, len(cores)))]


def pin(cores: list[int]) -> list[int]:
    """Pin this whole process to ``cores``: every thread it has (thread pools that TensorFlow, LiteRT
    or ONNX Runtime already started) and, through the calling thread, every thread it starts later.
    Returns the affinity now in force (unchanged where the OS refuses)."""
    if not hasattr(os, "sched_setaffinity") or not cores:
        return allowed_cores()
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        with suppress(OSError):  # a thread that ended meanwhile, or a mask the OS refuses
            os.sched_setaffinity(tid, set(cores))
    return allowed_cores()


def format_cores(cores: list[int]) -> str:
    return ",".join(map(str, cores))
