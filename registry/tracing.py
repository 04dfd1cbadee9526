"""Tracing with OpenTelemetry: off unless an endpoint is configured.

``REGISTRY_OTEL_ENDPOINT`` (an OTLP/HTTP collector, e.g. ``http://collector:4318``), or the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, turns it
on: a span per request (HTTP and gRPC) that continues an incoming ``traceparent``, with
child spans for decoding the request, its wait in the queue and encoding the answer, and
one span per forward pass, linked from every request that shared it, with the model, the
version and the batch size.

When it is off, ``TRACER`` is ``None``: no middleware is added, and the hot path pays one
module attribute look-up per step (``step`` just calls its function).
The tracer is process-wide, like torch's threads: the application installs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from registry.keys import VersionKey
    from registry.settings import Settings

TRACER: Tracer | None = None
"""The process's tracer while tracing is on; ``None`` (the default) when it is off."""

Ts = TypeVarTuple("Ts")
R = TypeVar("R")


def configure(settings: Settings) -> TracerProvider | None:
    """An SDK provider exporting over OTLP/HTTP in batches, where an endpoint is set;
    ``None`` (tracing off) otherwise. ``OTEL_SERVICE_NAME`` names the service
    (default ``registry``)."""
    standard = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if settings.otel_endpoint is None and not standard:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "registry")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    endpoint = settings.otel_endpoint
    exporter = OTLPSpanExporter(
        endpoint=None if endpoint is None else f"{endpoint.rstrip('/')}/v1/traces"
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def install(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (``None``: tracing off)."""
    global TRACER
    TRACER = None if provider is None else provider.get_tracer("registry")


CARRIED = ("traceparent", "tracestate")
"""The W3C trace-context fields a request carries its caller's trace in (HTTP headers,
gRPC metadata)."""


def server_span(
    tracer: Tracer, name: str, carrier: Mapping[str, str], attributes: Mapping[str, str]
) -> Span:
    """A request's span, continuing the caller's trace from ``carrier`` (its ``CARRIED``
    fields): what both doors start, the HTTP middleware and the gRPC service."""
    return tracer.start_span(
        name, context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
    )


def request_ended(span: Span, served: tuple[str, str] | None, status: int) -> None:
    """What both doors' request spans say of how a request ended: the model and version
    that answered, where one did, and an error status for a server error (5xx)."""
    if served is not None:
        span.set_attribute("registry.model", served[0])
        span.set_attribute("registry.version", served[1])
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def step(name: str, function: Callable[[*Ts], R], /, *args: *Ts) -> R:
    """``function(*args)``, as a child span of the current one named ``name`` (a step of a
    request: decode, encode) while tracing is on.

    NOTE: a call with positional arguments only, rather than a context manager: entering
    and leaving even a shared no-op one, or forwarding keyword arguments, cost 0.4 µs per
    step, several times the rest of tracing's cost when it is off.
    """
    tracer = TRACER
    if tracer is None:
        return function(*args)
    with tracer.start_as_current_span(name):
        return function(*args)


def current() -> tuple[SpanContext, int] | None:
    """The current span's context and the time now, for a request entering the queue;
    ``None`` when tracing is off."""
    if TRACER is None:
        return None
    return trace.get_current_span().get_span_context(), time.time_ns()


def record_pass(
    key: VersionKey,
    rows: int,
    queued: Sequence[tuple[SpanContext, int] | None],
    started_ns: int,
    ended_ns: int,
) -> None:
    """After a forward pass: each traced request's wait in the queue, as a child of its
    span, and one span for the pass, a child of the first request's span and linked from
    every request that shared it."""
    tracer = TRACER
    traced = [entry for entry in queued if entry is not None]
    if tracer is None or not traced:
        return
    for context, queued_ns in traced:
        if queued_ns < started_ns:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(context))
            span = tracer.start_span("queue", context=parent, start_time=queued_ns)
            span.end(end_time=started_ns)
    first = trace.set_span_in_context(trace.NonRecordingSpan(traced[0][0]))
    span = tracer.start_span(
        "forward",
        context=first,
        links=[Link(context) for context, _ in traced],
        start_time=started_ns,
        attributes={
            "registry.model": key.model,
            "registry.version": key.version,
            "registry.batch.rows": rows,
            "registry.batch.requests": len(queued),
        },
    )
    span.end(end_time=ended_ns)
