"""Keeping the garbage collector out of p99.

After start-up the heap holds everything torch and the loaders created: a full collection
walks it all (~90 ms here, ~250 ms with the models) and lands on whichever requests are in
flight. ``gc.freeze`` moves it out of the collector's sight, so collections only walk what
requests allocate. Frozen objects are never collected: a version released later gives its
memory back by emptying its tensors (``LoadedModel.release``), not through a collection,
so no full pass ever runs while serving. This is process-wide policy: the application's
lifespan applies it, never the registry.

Memory a released version gave back to the allocator is not given back to the system by
itself: glibc keeps it in the arena of the loader thread that allocated it, for reuse, and
raises its threshold for mapping large blocks apart. A registry that loads and evicts
versions all day would show the peak of each loader thread's arena as its RSS forever
(measured: +52 MB over 20 load/unload cycles of a 4 MiB version, then flat). ``trim``
hands it back after every release; it costs about 0.1 ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable


def freeze() -> None:
    """Collect once, then take what survives out of the collector's sight."""
    gc.collect()
    gc.freeze()


def thaw() -> None:
    """At shutdown: give the frozen heap back to the collector and collect it once."""
    gc.unfreeze()
    gc.collect()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def trim() -> None:
    """Give memory the allocator holds free back to the system (where glibc allows)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
