"""Keeping the garbage collector out of p99.

After start-up the heap holds everything torch and the loaders created: a full collection
walks it all (~90 ms here, ~250 ms with the models) and lands on whichever requests are in
flight. ``gc.freeze`` moves it out of the collector's sight, so collections only walk what
requests allocate. Frozen objects are never collected: a version released later gives its
memory back by emptying its tensors (``LoadedModel.release``), not through a collection,
so no full pass ever runs while serving. This is process-wide policy: the application's
lifespan applies it, never the registry.
"""

from __future__ import annotations

import gc


def freeze() -> None:
    """Collect once, then take what survives out of the collector's sight."""
    gc.collect()
    gc.freeze()


def thaw() -> None:
    """At shutdown: give the frozen heap back to the collector and collect it once."""
    gc.unfreeze()
    gc.collect()
