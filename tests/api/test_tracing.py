"""Tracing through both doors, exported to memory: one trace per request that continues the
caller's, its steps under it, and one forward span per pass, linked from every request
that shared it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from registry import tracing
from registry.app import create_app
from tests.factories import FEATURES, LIN_INPUT, affine_model, echo_model, write_manifest
from tests.support import make_settings, wait_for, wait_ready

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(tmp_path: Path, fast_path: bool, exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    weights = tmp_path / "weights"
    slow = echo_model(weights, "slow", "Sleepy", seconds=0.5)
    slow |= {"warmup": False, "batching": {"max_batch_size": 8}}
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",)), slow])
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(make_settings(tmp_path, fast_path=fast_path), tracer_provider=provider)
    with TestClient(app) as client:
        wait_ready(client)
        exporter.clear()  # NOTE: readiness polls are requests too
        yield client
    assert tracing.TRACER is None  # NOTE: the lifespan takes its tracer away at shutdown


def servers(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]


def under(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return sorted(
        span.name
        for span in exporter.get_finished_spans()
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    )


def test_each_request_is_one_trace_with_its_steps(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    for _ in range(3):
        answer = traced.post("/models/lin/predict", json={"inputs": LIN_INPUT})
        assert answer.status_code == 200

    requests = servers(exporter)
    assert len(requests) == 3
    assert len({span.context.trace_id for span in requests if span.context}) == 3
    for span in requests:
        assert span.name == "POST /models/{name}/predict"
        assert span.attributes is not None
        assert span.attributes["registry.model"] == "lin"
        assert span.attributes["registry.version"] == "1"
        assert span.attributes["http.response.status_code"] == 200
        assert {"decode", "encode", "forward"} <= set(under(exporter, span))


def test_an_incoming_traceparent_is_continued(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [FEATURES], "datatype": "FP32", "data": LIN_INPUT}]
    }
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}

    answer = traced.post("/v2/models/lin/infer", json=body, headers=headers)

    assert answer.status_code == 200
    (request,) = servers(exporter)
    assert request.context is not None
    assert request.parent is not None
    assert f"{request.context.trace_id:032x}" == CALLER_TRACE
    assert f"{request.parent.span_id:016x}" == CALLER_SPAN
    assert request.name == "POST /v2/models/{name}/infer"


def test_requests_batched_together_link_to_one_forward_span(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    """The first request holds the slow model's pass; the three sent while it runs queue
    and share the next one."""
    row = {"inputs": [0.0] * FEATURES}
    first_started = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(_predict_then, traced, row, first_started)
        assert first_started.wait(10)
        wait_for(
            lambda: traced.get("/models/slow").json()["versions"][0]["in_flight"] >= 1,
            "the first request to hold the model",
        )
        rest = [pool.submit(traced.post, "/models/slow/predict", json=row) for _ in range(3)]
        answers = [first.result(), *(f.result() for f in rest)]

    assert [a.status_code for a in answers] == [200] * 4
    requests = [s for s in servers(exporter) if s.name == "POST /models/{name}/predict"]
    passes = [s for s in exporter.get_finished_spans() if s.name == "forward"]
    linked = {link.context.span_id: span for span in passes for link in span.links}
    assert all(r.context is not None and r.context.span_id in linked for r in requests)
    shared = [span for span in passes if len(span.links) > 1]
    assert shared, "no pass was shared"
    for batch in shared:
        assert batch.attributes is not None
        assert batch.attributes["registry.batch.requests"] == len(batch.links)
        assert batch.attributes["registry.model"] == "slow"
    # NOTE: each request that queued behind the first pass has its wait as a child span
    waited = [r for r in requests if "queue" in under(exporter, r)]
    assert len(waited) >= sum(len(batch.links) for batch in shared)


def _predict_then(client: TestClient, row: object, started: threading.Event) -> httpx2.Response:
    started.set()
    return client.post("/models/slow/predict", json=row)
