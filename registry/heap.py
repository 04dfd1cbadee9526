"""Keeping the garbage collector out of p99.

After start-up the heap holds everything torch and the loaders created: a full collection
walks it all (~90 ms here, ~250 ms with the models) and lands on whichever requests are in
flight. ``gc.freeze`` moves it out of the collector's sight, so collections only walk what
requests allocate. Frozen objects are never collected: a version released later gives its
memory back by emptying its tensors (``LoadedModel.release``), not through a collection,
so no full pass ever runs while serving. This is process-wide policy: the application's
lifespan applies it, never the registry.

The young generation's threshold is raised with it. A request in flight holds some eighty
objects the collector tracks (a coroutine per layer, closures and their cells, futures),
and by CPython's default a collection runs whenever 700 more of them are alive than at
the last one: under load, every dozen requests or so, each walking every request in
flight. With ``tiny`` at 64 clients that was a tenth of the event loop's time (perf:
``gc_collect_main`` and the visits it makes). Requests free their objects by reference
counting, and the answers hold no cycles, so collections mostly walk live objects and
find nothing: rarer ones cost about the same each and free the same garbage.

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

YOUNG_THRESHOLD = 20_000
"""Tracked objects alive beyond the last collection that start the next one while serving.

NOTE: measured with ``tiny`` at 64 clients (wrk): CPython's 700 ran a collection every 18
requests, about 10 µs of the loop's time per request; 20,000 ran none in 100,000 requests,
for 5-10 % more requests a second. The garbage a cycle may leave waits at most that many
allocations: a few megabytes."""

_thresholds: tuple[int, int, int] | None = None  # what freeze() replaced, for thaw()


def freeze() -> None:
    """Collect once, then take what survives out of the collector's sight, and collect
    the young generation less often (``YOUNG_THRESHOLD``)."""
    global _thresholds
    gc.collect()
    gc.freeze()
    if _thresholds is None:
        _thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, *_thresholds[1:])


def thaw() -> None:
    """At shutdown: give the frozen heap back to the collector, restore the thresholds
    and collect once."""
    global _thresholds
    gc.unfreeze()
    if _thresholds is not None:
        gc.set_threshold(*_thresholds)
        _thresholds = None
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
