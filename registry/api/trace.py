"""``Trace``: a server span per HTTP request, added only while tracing is on.

It continues the caller's trace (``traceparent``, ``tracestate``) and makes the span the
current one while the application runs, so the steps of the request (``tracing.step``) and
its wait in the queue and forward pass (``tracing.record_pass``) hang under it. Its name
is the route that matched (``POST /models/{name}/predict``), and it carries the model and
version that answered.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry import tracing

_CARRIED = tuple(field.encode("latin-1") for field in tracing.CARRIED)


class Trace:
    def __init__(self, app: ASGIApp, *, tracer: Tracer) -> None:
        self.app = app
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key in _CARRIED
        }
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        span = tracing.server_span(self._tracer, method, carrier, attributes)
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with trace.use_span(span, end_on_exit=True, record_exception=False):
            try:
                await self.app(scope, receive, sending)
            finally:
                _describe(span, scope, status)


def _describe(span: Any, scope: Scope, status: int) -> None:
    route = getattr(scope.get("route"), "path", None)
    if route:
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    served = scope.get("state", {}).get("served")
    tracing.request_ended(span, served if isinstance(served, tuple) else None, status)
