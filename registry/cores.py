"""How many cores this process may really use: its CPU affinity, within its cgroup's quota.

``os.cpu_count()`` counts the machine's cores, which a container with a CPU limit (or a
process pinned with ``taskset``) does not get: torch threads sized from it would outnumber
the cores and spin against each other. Torch-free, so that settings can use it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

CGROUP = Path("/sys/fs/cgroup")


def available_cores() -> int:
    """The cores of this process's affinity, or fewer where a CPU quota says so."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover (macOS, Windows)
        cores = os.cpu_count() or 1
    quota = cpu_quota(CGROUP, _membership())
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cpu_quota(root: Path, membership: str = "") -> float | None:
    """The CPUs' worth of time allowed per period by the tightest quota on the way from
    this process's cgroup up to ``root`` (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``);
    None without a limit, or where there is no cgroup to read.

    NOTE: ``membership`` is ``/proc/self/cgroup``: inside a container's own cgroup
    namespace the process's cgroup is the root (``0::/``), but under systemd's
    ``CPUQuota=``, ``--cgroupns=host`` or a nested hierarchy the quota sits on the
    process's cgroup or one above it, not on the root.
    """
    v2, v1 = _paths(membership)
    found = [q for d in _upwards(root, v2) if (q := _v2_quota(d)) is not None]
    if not found:
        found = [q for d in _upwards(root / "cpu", v1) if (q := _v1_quota(d)) is not None]
    return min(found) if found else None


def _membership() -> str:
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return ""


def _paths(membership: str) -> tuple[str, str]:
    """This process's cgroup in the v2 hierarchy and in v1's ``cpu`` one (``/``: none)."""
    v2 = v1 = "/"
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _upwards(root: Path, cgroup: str) -> list[Path]:
    """``root`` joined with ``cgroup``, then each folder above it, ``root`` last."""
    parts = [part for part in PurePosixPath(cgroup).parts if part not in ("/", "..", ".")]
    return [root.joinpath(*parts[:end]) for end in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    try:
        text = (folder / "cpu.max").read_text().split()
        return int(text[0]) / int(text[1]) if text[0] != "max" else None
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
