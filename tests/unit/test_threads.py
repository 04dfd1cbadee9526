"""``registry.threads``: a count set in one thread holds there, and the process's permits
keep its OpenMP workers within its cores."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from registry.threads import WideThreads, permit_count, use_threads


def test_a_count_set_holds_whatever_another_thread_sets_next() -> None:
    before = torch.get_num_threads()
    was_set, other_set = threading.Event(), threading.Event()
    seen: list[int] = []

    def setter() -> None:
        use_threads(3)
        was_set.set()
        other_set.wait(10)
        seen.append(torch.get_num_threads())

    def other() -> None:
        was_set.wait(10)
        torch.set_num_threads(1)
        other_set.set()

    try:
        threads = [threading.Thread(target=setter), threading.Thread(target=other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        torch.set_num_threads(before)  # NOTE: what threads started later take
    assert seen == [3]


@pytest.mark.parametrize(
    ("threads", "cores", "permits"),
    [
        (1, 2, 0),  # one thread needs no workers, so no permit
        (2, 2, 1),  # the first thread and one worker: the two cores
        (16, 16, 1),
        (4, 16, 5),  # 1 + 5 x 3 = 16
        (2, 16, 15),
        (3, 2, 1),  # more threads than cores: still one, or the setting would go unused
    ],
)
def test_permits_keep_the_first_thread_and_the_workers_within_the_cores(
    threads: int, cores: int, permits: int
) -> None:
    assert permit_count(threads, cores) == permits


def test_a_refused_permit_is_wanted_until_one_is_given_back() -> None:
    permits = WideThreads(2, cores=2)
    assert permits.try_take()
    assert not permits.wanted
    assert not permits.try_take()
    assert permits.wanted
    permits.give_back()
    assert not permits.wanted  # NOTE: the one who wanted it takes it at its next pass
    assert permits.try_take()


WORKERS = """
import os, threading
import numpy as np
import torch
from registry.threads import WideThreads, use_threads
from registry.batching import Batcher, concatenated
from registry.keys import VersionKey
from registry.manifest import BatchingSpec
import asyncio

def tasks():
    return set(os.listdir("/proc/self/task"))

def forward(rows):
    # NOTE: a million elements: far above torch's grain, so it runs on OpenMP's threads
    torch.ones(1 << 20).exp_().sum()
    return rows

use_threads(1)
torch.ones(1 << 20).exp_()  # NOTE: whatever torch starts once, before the count
before = tasks()
async def main():
    permits = {permits}
    batchers = [
        Batcher(concatenated(forward), BatchingSpec(), key=VersionKey(name, "1"), inline_max_s=0.0,
                share=lambda passes, many: use_threads(2 if many else 1), wide=permits)
        for name in ("a", "b", "c")
    ]
    for batcher in batchers:
        batcher.start()
    for _ in range(3):
        for batcher in batchers:
            await batcher.submit(np.ones((1, 1), dtype=np.float32))
    python = {{str(t.native_id) for t in threading.enumerate()}}
    print(len(tasks() - before - python))
    for batcher in batchers:
        await batcher.stop()
asyncio.run(main())
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads in /proc")
@pytest.mark.parametrize(("permits", "workers"), [("WideThreads(2, cores=2)", 1), ("None", 3)])
def test_three_versions_on_two_threads_keep_as_many_workers_as_their_permits(
    permits: str, workers: int
) -> None:
    """Three versions run passes that go parallel on two threads: with one permit, one
    OpenMP worker is left in the process; without permits (each first instance on two
    threads), one each, which puts libgomp on its slow path on two cores."""
    script = textwrap.dedent(WORKERS).format(permits=permits)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == workers
