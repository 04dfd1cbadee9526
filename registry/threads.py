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
it runs a pass (``registry.batching``). Every other thread that runs torch (the event
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
