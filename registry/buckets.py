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

    NOTE: written by one thread and read whole by a scrape; list items and numbers are
    replaced atomically, so a reader sees at worst the latest value not yet counted.
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


def cumulative(bounds: tuple[float, ...], counts: tuple[int, ...]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative ``le`` buckets."""
    edges = [*(str(edge) for edge in bounds), "+Inf"]
    return list(zip(edges, itertools.accumulate(counts), strict=True))
