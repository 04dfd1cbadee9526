"""The request metrics keep counting across their cache of label children."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry import metrics as metrics_module
from registry.metrics import Metrics
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


def test_counts_and_latencies_survive_the_cache_being_emptied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "_CACHED_CHILDREN", 3)
    metrics = Metrics(_no_models, Counter())
    for _ in range(2):
        metrics.observe("lin", "1", 200, 0.002)
    for status in (404, 413, 422, 503):  # NOTE: more series than the cache holds
        metrics.observe("lin", "1", status, 0.001)
    metrics.observe("lin", "1", 200, 0.002)

    counts = _samples(metrics, "registry_requests_total")
    ok = (("model", "lin"), ("status", "200"), ("version", "1"))
    assert counts[ok] == 3
    assert sum(counts.values()) == 7
    latencies = _samples(metrics, "registry_request_duration_seconds_count")
    assert latencies[(("model", "lin"), ("version", "1"))] == 7
