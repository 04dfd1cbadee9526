"""``available_cores``: the affinity, within a cgroup's CPU quota (v2 or v1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from registry import cores
from registry.cores import available_cores, cpu_quota


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu.max": "garbled"}, None),
        ({}, None),
    ],
)
def test_the_quota_is_read_from_cgroup_v2_or_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    assert cpu_quota(tmp_path) == quota


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux affinity")
def test_a_quota_below_the_affinity_rounds_up_to_whole_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "cpu.max", "50000 100000\n")  # half a core
    monkeypatch.setattr(cores, "CGROUP", tmp_path)
    assert available_cores() == 1
    write(tmp_path / "cpu.max", "max 100000\n")
    assert available_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "membership", "quota"),
    [
        pytest.param(
            {"system.slice/app.service/cpu.max": "50000 100000\n", "cpu.max": "max 100000\n"},
            "0::/system.slice/app.service\n",
            0.5,
            id="v2-systemd-CPUQuota",
        ),
        pytest.param(
            {"kubepods/cpu.max": "300000 100000\n", "kubepods/pod1/c1/cpu.max": "max 100000\n"},
            "0::/kubepods/pod1/c1\n",
            3.0,
            id="v2-quota-on-an-ancestor",
        ),
        pytest.param(
            {
                "cpu/docker/abc/cpu.cfs_quota_us": "150000\n",
                "cpu/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
            1.5,
            id="v1-host-namespace",
        ),
        pytest.param({"cpu.max": "200000 100000\n"}, "0::/\n", 2.0, id="v2-own-namespace"),
    ],
)
def test_the_tightest_quota_from_the_process_cgroup_up_counts(
    tmp_path: Path, files: dict[str, str], membership: str, quota: float
) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    assert cpu_quota(tmp_path, membership) == quota
