"""The request metrics count each series apart through their cache of label children."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from registry.metrics import Metrics
from registry.repository.report import LoadTally
from registry.status import RegistryStatus


def _no_models() -> RegistryStatus:
    return RegistryStatus(ready=True, models={}, loading=(), draining=())


def _samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name == name
    }


def test_each_series_counts_its_own_requests_through_the_cache() -> None:
    metrics = Metrics(_no_models, Counter(), LoadTally())
    for _ in range(2):
        metrics.observe("lin", "1", 200, 0.002)
    for status in (404, 413, 422, 503):
        metrics.observe("lin", "1", status, 0.001)
    metrics.observe("lin", "2", 200, 0.002)
    metrics.observe("lin", "1", 200, 0.002)

    counts = _samples(metrics, "registry_requests_total")
    assert counts[(("model", "lin"), ("status", "200"), ("version", "1"))] == 3
    assert counts[(("model", "lin"), ("status", "200"), ("version", "2"))] == 1
    assert counts[(("model", "lin"), ("status", "503"), ("version", "1"))] == 1
    assert sum(counts.values()) == 8
    latencies = _samples(metrics, "registry_request_duration_seconds_count")
    assert latencies[(("model", "lin"), ("version", "1"))] == 7
    assert latencies[(("model", "lin"), ("version", "2"))] == 1
