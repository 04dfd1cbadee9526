"""How many cores this process may really use: its CPU affinity, within its cgroup's quota.

``os.cpu_count()`` counts the machine's cores, which a container with a CPU limit (or a
process pinned with ``taskset``) does not get: torch threads sized from it would outnumber
the cores and spin against each other. Torch-free, so that settings can use it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available_cores() -> int:
    """The cores of this process's affinity, or fewer where a CPU quota says so."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover (macOS, Windows)
        cores = os.cpu_count() or 1
    quota = cpu_quota(CGROUP)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cpu_quota(root: Path) -> float | None:
    """The CPUs' worth of time a cgroup (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``)
    allows per period; None without a limit, or where there is no cgroup to read."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
