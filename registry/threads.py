"""Torch's intra-op thread count, set per thread so that it holds.

Two things make this more than ``torch.set_num_threads``:

- torch keeps the count per thread, but a thread that has not yet read its own takes, on
  its first parallel operation, the count that any thread set last. So a count is read
  back at once, which fixes it for the thread that set it.
- CPU kernels run their parallel regions on OpenMP (libgomp), which gives every thread
  that runs a region on more than one thread workers of its own, kept for as long as the
  thread lives. While a process holds no more of them than it has cores, idle workers
  spin between regions and the many regions of a pass follow each other at once; with
  more, libgomp stops spinning in every thread and each region waits for the kernel to
  wake its workers (a two-thread minilm pass ran 15-40 % slower on 2 cores). So only
  threads that serve passes use more than one: loader threads use one, and of a version's
  instances only the first (``registry.instances``).
"""

from __future__ import annotations

import torch


def use_threads(count: int) -> None:
    """Run this thread's torch operations on ``count`` intra-op threads from now on."""
    torch.set_num_threads(count)
    torch.get_num_threads()  # NOTE: read back: see the module docstring
