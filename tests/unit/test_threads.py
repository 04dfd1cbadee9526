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

from registry.threads import (
    WIDE_AFTER_S,
    WIDE_EVIDENCE,
    WIDE_RECHECK,
    PassWidth,
    WideThreads,
    permit_count,
    use_threads,
)


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

LINEAR = torch.nn.Linear(64, 128)

def forward(rows):
    {forward}
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
    for _ in range({passes}):
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
    assert openmp_workers(permits, LONG_FORWARD, passes=WIDE_EVIDENCE + 2) == workers


def test_versions_whose_passes_are_short_start_no_openmp_worker() -> None:
    """A one-row pass through ``tiny``'s first layer: on two threads, torch forms an
    OpenMP team for it, whose worker then spins between passes for nothing. On one, none."""
    assert openmp_workers("WideThreads(2, cores=2)", SHORT_FORWARD, passes=20) == 0


LONG_FORWARD = "torch.ones(1 << 20).exp_().sum()  # NOTE: far above torch's grain: OpenMP's threads"
SHORT_FORWARD = "LINEAR(torch.ones(1, 64))  # NOTE: microseconds, yet a parallel region"


def openmp_workers(permits: str, forward: str, passes: int) -> int:
    """The OpenMP workers left in a process after three versions each ran ``passes`` lone
    passes of ``forward``, their batchers given ``permits``."""
    script = textwrap.dedent(WORKERS).format(permits=permits, forward=forward, passes=passes)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def widths(width: PassWidth, computed_s: list[float]) -> list[bool]:
    """Whether each pass ran on several threads, each computing as given on its own."""
    chosen = []
    for seconds in computed_s:
        several = width.several()
        chosen.append(several)
        width.ran(several, seconds)
    return chosen


LONG_S, SHORT_S = 2 * WIDE_AFTER_S, WIDE_AFTER_S / 10


def test_passes_run_on_several_threads_once_those_on_one_have_computed_long() -> None:
    chosen = widths(PassWidth(), [LONG_S] * (WIDE_EVIDENCE + 2))
    assert chosen == [False] * WIDE_EVIDENCE + [True, True]


def test_short_passes_stay_on_one_thread_whatever_a_few_long_ones_say() -> None:
    """A new thread's first passes compute long, and on a busy VM so do bursts of up to
    six in a row now and then (as a served ``tiny`` at concurrency 1 showed)."""
    outliers = [LONG_S, LONG_S] + [SHORT_S] * 3 + ([LONG_S] * 6 + [SHORT_S] * 3) * 10
    assert not any(widths(PassWidth(), outliers))


def test_one_short_pass_restarts_the_evidence() -> None:
    evidence = [LONG_S] * (WIDE_EVIDENCE - 1) + [SHORT_S] + [LONG_S] * (WIDE_EVIDENCE + 1)
    chosen = widths(PassWidth(), evidence)
    assert chosen == [False] * (2 * WIDE_EVIDENCE) + [True]


def test_every_so_often_a_pass_on_one_thread_checks_that_they_still_gain() -> None:
    width = PassWidth()
    widths(width, [LONG_S] * WIDE_EVIDENCE)
    chosen = widths(width, [LONG_S] * (2 * (WIDE_RECHECK + 1) + 2))
    assert chosen == ([True] * WIDE_RECHECK + [False]) * 2 + [True, True]
    chosen = widths(width, [SHORT_S] * (WIDE_RECHECK + WIDE_EVIDENCE + 1))
    assert chosen == [True] * (WIDE_RECHECK - 2) + [False] * (WIDE_EVIDENCE + 3)


def test_with_no_threshold_passes_run_on_several_threads_from_the_first() -> None:
    assert widths(PassWidth(after_s=0.0), [SHORT_S] * 3) == [True] * 3
