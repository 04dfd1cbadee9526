"""Torch's intra-op threads: which threads of the process may use more than one, and how.

Two things make this more than ``torch.set_num_threads``:

- torch keeps the count per thread, but a thread that has not yet read its own takes, on
  its first parallel operation, the count that any thread set last. So ``use_threads``
  reads the count back at once, which fixes it for the thread that set it.
- CPU kernels run their parallel regions on OpenMP (libgomp), which gives every thread
  that runs a region on more than one thread workers of its own, kept for as long as the
  thread lives. While the process holds no more workers (plus its first thread) than it
  has cores, idle workers spin between regions and the many regions of a pass follow each
  other at once; with one more, libgomp stops spinning in every thread and each region
  waits for the kernel to wake its workers (a two-thread minilm pass ran 15-40 % slower on
  2 cores, and a server answered a third fewer minilm requests once its similarity model
  had run one pass on two threads).

So only a few threads of the whole process ever run torch on more than one thread: those
holding one of ``WideThreads``' permits, taken by a version's first inference thread when
it runs a pass that ``PassWidth`` says is long enough to gain from them
(``registry.batching``). Every other thread that runs torch (the event
loop, loader threads, the other inference threads) stays on one thread, and no thread
gives a permit back while it lives: only a thread's end frees its workers.
"""

from __future__ import annotations

import threading

import torch

from registry.cores import available_cores


def use_threads(count: int) -> None:
    """Run this thread's torch operations on ``count`` intra-op threads from now on."""
    torch.set_num_threads(count)
    torch.get_num_threads()  # NOTE: read back: see the module docstring


def permit_count(threads: int, cores: int) -> int:
    """How many threads may run passes on ``threads`` torch threads each while libgomp
    keeps spinning: it counts the process's first thread and every worker, so
    ``1 + permits * (threads - 1)`` must not exceed the cores. At least one, so that a
    count set above the cores is still used; none for passes on one thread."""
    if threads <= 1:
        return 0
    return max(1, (cores - 1) // (threads - 1))


class WideThreads:
    """The permits to run passes on ``threads`` torch threads, shared by the process.

    A thread that holds one keeps it, and its OpenMP workers, until it ends. ``wanted``
    says that a thread was refused one since one was last taken: the holder then ends when
    it goes idle, and a successor takes its place (``Batcher``), so that a model that
    goes quiet hands the permit on.
    """

    def __init__(self, threads: int, cores: int | None = None) -> None:
        self.threads = threads
        self._free = permit_count(threads, cores or available_cores())
        self._lock = threading.Lock()
        self._wanted = False

    @property
    def wanted(self) -> bool:
        return self._wanted

    def try_take(self) -> bool:
        """A permit for the calling thread, if one is free; else note that one is wanted."""
        with self._lock:
            if self._free:
                self._free -= 1
                self._wanted = False
                return True
            self._wanted = True
            return False

    def give_back(self) -> None:
        """Called once the thread that held a permit has ended (its workers with it)."""
        with self._lock:
            self._free += 1
            self._wanted = False  # NOTE: whoever wanted one takes it at its next pass


NARROW = WideThreads(1, cores=1)
"""No permits: for versions whose passes run on another device, where the CPU only
launches them."""


WIDE_AFTER_S = 500e-6
"""A pass that computes at least this long on one thread may gain from several.

NOTE: a short pass gains nothing from more threads (``tiny``'s one-row pass takes 21 µs
on one thread and 22 on two; ``medium``'s 1,168 µs and 551), yet a thread that has run
one parallel region keeps an OpenMP worker spinning for milliseconds after each: between
a small model's requests that worker burnt a core of its own, which the event loop and
the client needed (``tiny`` at concurrency 1: 2,708 req/s, against 3,378 on one thread).
Not lower: on a busy VM every small pass computes for longer (``tiny``'s for 200-300 µs
a pass while the host was busy), and a pass of 500 µs has at most 250 to gain."""

WIDE_EVIDENCE = 9
"""How many passes in a row on one thread must each compute ``WIDE_AFTER_S`` before
passes run on several.

NOTE: each of them, not their median: on a busy VM a small pass computes for 1-2 ms now
and then (a new thread's first passes; the host's preemption charged to the thread), and
such passes come in bursts of up to six in a row, about every 1.6 s under load. A median
of nine took those bursts for evidence: ``tiny`` at concurrency 1 ran 4 % of its passes on
two threads, with an OpenMP worker spinning beside the event loop and the permit held.
A pass that is long for its work is long every time."""

WIDE_RECHECK = 63
"""Passes on several threads between two on one, which check that they still gain.

NOTE: such a pass of ``medium`` takes twice as long, so 1 in 64 costs under 2 %; a model
whose inputs grew short is back on one thread at the next check."""


class PassWidth:
    """One inference thread's evidence that its passes gain from several threads.

    Judged by the thread's CPU time, not the wall clock: in a busy server a small pass
    often waits for the GIL or a core (half of ``tiny``'s took over 100 µs by the clock,
    one in forty over 250), which no thread would shorten. And on one thread only: on
    several, the thread also spins at each region's end until its workers are done,
    however little they had to do. So passes run on several threads once ``WIDE_EVIDENCE``
    in a row on one each computed ``WIDE_AFTER_S``, and after every
    ``WIDE_RECHECK`` such passes one runs on one thread again and must compute as long.
    A version whose passes are short thus never takes a permit, nor makes OpenMP workers.
    """

    def __init__(self, after_s: float = WIDE_AFTER_S) -> None:
        """``after_s``: ``WIDE_AFTER_S``, or 0 for passes on several threads from the first."""
        self._after_s = after_s
        self._long_streak = 0  # passes in a row on one thread that computed long
        self._gains = after_s <= 0
        self._wide_run = 0  # passes on several threads since the last on one

    def several(self) -> bool:
        """Whether the next pass is to run on several threads (where it may)."""
        return self._gains and self._wide_run < WIDE_RECHECK

    @property
    def gains(self) -> bool:
        """Whether the passes gain from several threads, as far as the evidence says."""
        return self._gains

    def ran(self, several: bool, computed_s: float) -> None:
        """A pass ran on several threads or on one, and computed this long on its own."""
        if several:
            self._wide_run += 1
            return
        self._wide_run = 0
        long = computed_s >= self._after_s
        if self._gains and long:  # NOTE: a check, or a pass refused a permit: one will do
            return
        self._long_streak = self._long_streak + 1 if long else 0
        self._gains = self._long_streak >= WIDE_EVIDENCE
