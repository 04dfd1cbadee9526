"""Keeping the garbage collector out of p99.

After start-up the heap holds everything torch created: a full collection walks it all
(~80 ms here) and lands on whichever requests are in flight. ``gc.freeze`` moves it out of
the collector's sight, so collections only walk what requests allocate. Frozen objects are
never collected, though, and some modules (exported graphs) hold reference cycles: a model
loaded before the freeze needs one full pass once it is released.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

from registry.model import LoadedModel


def freeze(models: Iterable[LoadedModel]) -> None:
    for model in models:
        model.in_frozen_heap = True
    gc.collect()
    gc.freeze()


def collect_everything() -> None:
    """One full pass over the frozen heap too, then freeze what survives again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
