"""A histogram's content kept by hand: counts per upper bound, and the sum of the values.

``/metrics`` reads these whole at scrape time (``HistogramMetricFamily``), so the code that
observes them needs no metric object: the inference thread counts its passes, the loader
counts its loads.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field


@dataclass(eq=False)
class Buckets:
    """Observations per bucket of ``bounds`` (``value <= bound``), then one for beyond.

    NOTE: written by one thread at a time (writers on several hold a lock) and read whole
    by a scrape; list items and numbers are replaced atomically, so a reader sees at worst
    the latest value not yet counted.
    """

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    """The sum of every value observed."""

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def frozen(self) -> Held:
        return Held(self.bounds, tuple(self.counts), self.total)


@dataclass(frozen=True, slots=True)
class Held:
    """A histogram's content at one moment, as a status snapshot keeps it."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    def cumulative(self) -> list[tuple[str, float]]:
        return cumulative(self.bounds, self.counts)


def cumulative(bounds: tuple[float, ...], counts: tuple[int, ...]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative ``le`` buckets."""
    edges = [*(str(edge) for edge in bounds), "+Inf"]
    return list(zip(edges, itertools.accumulate(counts), strict=True))
