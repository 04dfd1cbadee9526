"""Prometheus metrics on a per-application ``CollectorRegistry`` (never the global one).

Counters and the latency histogram are updated per request by the observing middleware.
Everything that describes live state (in-flight leases, queue depth, memory, load times,
versions and their aliases, rows per forward pass, reloads, loads) is read from a status snapshot
at scrape time, so the hot path pays nothing for it and it can never drift from the truth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import prometheus_client as prometheus
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from registry.repository.report import LoadTally
from registry.status import RegistryStatus
from registry.table import VersionState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN = "(unknown)"  # NOTE: bounds label cardinality when clients ask for absent models
_Children = tuple[prometheus.Counter, prometheus.Histogram]


class Metrics:
    def __init__(
        self,
        status: Callable[[], RegistryStatus],
        reloads: Counter[str],
        loads: LoadTally,
        evictions: Counter[tuple[str, str]] | None = None,
        manifest: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``manifest`` gives the fingerprint of the manifest served, at scrape time."""
        self.collectors = prometheus.CollectorRegistry(auto_describe=True)
        self.requests = prometheus.Counter(
            "registry_requests",
            "Prediction requests answered, by model, version and HTTP status.",
            ["model", "version", "status"],
            registry=self.collectors,
        )
        self.latency = prometheus.Histogram(
            "registry_request_duration_seconds",
            "Prediction latency from first byte in to response start, by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.collectors,
        )
        self.collectors.register(
            LiveState(
                status, reloads, loads, Counter() if evictions is None else evictions, manifest
            )
        )
        # NOTE: ``labels()`` checks and copies its values and takes a lock on every call,
        # more than the increment itself; the children it returns are kept here instead.
        # No bound of its own: Prometheus keeps every child it made for as long, too.
        self._children: dict[tuple[str, str, int], _Children] = {}

    def observe(self, model: str, version: str, status: int, seconds: float) -> None:
        key = (model, version, status)
        children = self._children.get(key)
        if children is None:
            children = self._children_for(key)
        children[0].inc()
        children[1].observe(seconds)

    def _children_for(self, key: tuple[str, str, int]) -> _Children:
        model, version, status = key
        children = (
            self.requests.labels(model, version, str(status)),
            self.latency.labels(model, version),
        )
        self._children[key] = children
        return children

    def render(self) -> bytes:
        return prometheus.generate_latest(self.collectors)


class LiveState(Collector):
    """Gauges read from one status snapshot when Prometheus scrapes."""

    def __init__(
        self,
        status: Callable[[], RegistryStatus],
        reloads: Counter[str],
        loads: LoadTally,
        evictions: Counter[tuple[str, str]],
        manifest: Callable[[], str | None],
    ) -> None:
        self._status = status
        self._reloads = reloads
        self._loads = loads
        self._evictions = evictions
        self._manifest = manifest

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        in_flight = GaugeMetricFamily(
            "registry_in_flight_requests", "Requests holding a model version now.", labels=labels
        )
        queued = GaugeMetricFamily(
            "registry_queue_depth", "Requests queued for a version's next batch.", labels=labels
        )
        memory = GaugeMetricFamily(
            "registry_model_memory_bytes", "Parameter and buffer bytes per version.", labels=labels
        )
        load = GaugeMetricFamily(
            "registry_model_load_seconds", "Time to load a version.", labels=labels
        )
        warmup = GaugeMetricFamily(
            "registry_model_warmup_seconds", "Time to warm a version up.", labels=labels
        )
        info = GaugeMetricFamily(
            "registry_model_info",
            "One series per served version: its aliases (comma-separated) and sha256.",
            labels=["model", "version", "alias", "sha256"],
        )
        status = self._status()
        # NOTE: a reloaded version may still drain under the same (model, version) key:
        # one series each, so its leases are added up rather than emitted twice.
        leases: Counter[tuple[str, str]] = Counter()
        for retired in status.draining:
            leases[retired.key] += retired.leases
        for served in status.versions():
            key = list(served.key)
            info.add_metric([*key, ",".join(served.aliases), served.spec.sha256 or ""], 1)
            if served.state is not VersionState.READY:
                continue
            leases[served.key] += served.leases
            queued.add_metric(key, served.queue_depth)
            memory.add_metric(key, served.memory_bytes or 0)
            load.add_metric(key, (served.load_ms or 0) / 1000)
            warmup.add_metric(key, (served.warmup_ms or 0) / 1000)
        for (name, version), count in sorted(leases.items()):
            in_flight.add_metric([name, version], count)
        passes = HistogramMetricFamily(
            "registry_batch_rows",
            "Rows per forward pass served (requests that met in the queue share one).",
            labels=labels,
        )
        pass_seconds = HistogramMetricFamily(
            "registry_pass_seconds",
            "Seconds per forward pass served, handler hooks included: what the model costs.",
            labels=labels,
        )
        queue_seconds = HistogramMetricFamily(
            "registry_queue_seconds",
            "Seconds each request waited before its forward pass began: how busy it is.",
            labels=labels,
        )
        for served in status.versions():
            for family, held in (
                (passes, served.pass_rows),
                (pass_seconds, served.pass_seconds),
                (queue_seconds, served.queue_seconds),
            ):
                if held is not None:
                    family.add_metric(list(served.key), held.cumulative(), sum_value=held.total)
        reloads = CounterMetricFamily("registry_reloads", "Reloads by outcome.", labels=["outcome"])
        for outcome, count in sorted(self._reloads.items()):
            reloads.add_metric([outcome], count)
        yield from (in_flight, queued, memory, load, warmup, info, passes, reloads)
        yield from (pass_seconds, queue_seconds)
        yield from self._load_families()
        yield from self._residency_families(status)

    def _residency_families(self, status: RegistryStatus) -> Iterator[Metric]:
        """Each version's state, evictions by reason, and memory charged per device."""
        states = GaugeMetricFamily(
            "registry_version_state",
            "1 for the state each version is in (unloaded, loading, ready, failed, evicting).",
            labels=["model", "version", "state"],
        )
        for version in status.versions():
            states.add_metric([*version.key, version.state], 1)
        evictions = CounterMetricFamily(
            "registry_evictions",
            "Versions taken out of memory while the manifest names them, by reason.",
            labels=["model", "reason"],
        )
        for (model, reason), count in sorted(self._evictions.items()):
            evictions.add_metric([model, reason], count)
        charged = GaugeMetricFamily(
            "registry_memory_charged_bytes",
            "Model memory charged against the budget: loaded versions and loads under way.",
            labels=["device"],
        )
        budget = GaugeMetricFamily(
            "registry_memory_budget_bytes",
            "The memory budget per device (REGISTRY_MEMORY_BUDGET_BYTES), where one is set.",
            labels=["device"],
        )
        for device, memory in status.memory.items():
            charged.add_metric([device], memory.charged)
            if memory.budget is not None:
                budget.add_metric([device], memory.budget)
        served = GaugeMetricFamily(
            "registry_manifest_info",
            "1, labelled with the fingerprint of the manifest served: one value across the "
            "replicas once a manifest change has reached them all.",
            labels=["sha256"],
        )
        if (fingerprint := self._manifest()) is not None:
            served.add_metric([fingerprint], 1)
        yield from (states, evictions, charged, budget, served)

    def _load_families(self) -> Iterator[Metric]:
        """Loads by model and outcome, and how long they took (start-up and reloads)."""
        loads = CounterMetricFamily(
            "registry_loads",
            "Version loads by model and outcome: loaded, failed, or refused (no room).",
            labels=["model", "outcome"],
        )
        for (model, outcome), count in sorted(self._loads.outcomes.items()):
            loads.add_metric([model, outcome], count)
        durations = HistogramMetricFamily(
            "registry_load_duration_seconds",
            "Time to read, deserialise and warm up a version, loaded or failed.",
            labels=["model"],
        )
        for model, seconds in sorted(self._loads.durations.items()):
            held = seconds.frozen()
            durations.add_metric([model], held.cumulative(), sum_value=held.total)
        yield from (loads, durations)
