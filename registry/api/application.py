"""The FastAPI application, minus FastAPI's layers that have nothing to do for a request.

FastAPI wraps every request in five layers before the first middleware of ours: its own
``__call__`` (which asks whether its native telemetry is on), Starlette's, the last-resort
``ServerErrorMiddleware``, ``ExceptionTelemetryMiddleware`` and ``AppBodyLimitMiddleware``.
With telemetry off and no app-wide ``max_body_size``, as ``create_app`` builds it, the last
two only pass the request on, unless the scope carries what a parent application puts
there when it mounts this one. Each layer is a coroutine per request: together about
4 µs of the event loop's 90-110 µs per `tiny` prediction at 64 clients, the loop being
what limits it there.

``ServerErrorMiddleware`` is idle too when the next layer is ``Observe``, as
``create_app`` builds it: ``Observe`` answers every exception with the same handler, and
what it lets through (a response already begun, a failing handler) the middleware would
only re-raise, or answer with the plain 500 that uvicorn sends on its own. Yet it wraps
``send`` in a coroutine of its own per message: about 7,000 instructions of the 412,000
the application spends on a `tiny` prediction (``python -m bench.instructions --stub``).

So ``Application`` keeps FastAPI's stack as FastAPI builds it (for the lifespan, and for a
request whose scope needs a pass-through after all) and beside it the same stack without
the idle layers, which serves every other HTTP request. Should FastAPI's layers change, or
a middleware be added outside ``Observe``, nothing is left out that is not known to be
idle, and the app is served as FastAPI builds it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from registry.api.observe import Observe

try:  # NOTE: FastAPI 0.164 added app-wide body limits, and this layer with them
    from fastapi._body_limit import AppBodyLimitMiddleware
    from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
except ImportError:  # pragma: no cover - FastAPI 0.163 (pyproject admits it)
    AppBodyLimitMiddleware = None  # type: ignore[assignment,misc]
    MAX_BODY_SIZE_SCOPE_KEY = "starlette.max_body_size"

_TELEMETRY_SCOPE_KEY = "fastapi.telemetry"  # NOTE: set by a parent's native telemetry

__all__ = ["AppBodyLimitMiddleware", "Application"]


class Application(FastAPI):
    """``FastAPI``, serving HTTP requests through its stack less the idle pass-throughs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lean_stack: ASGIApp | None = None  # built with FastAPI's own, on first use

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        self.lean_stack = self._without_idle_layers(stack)
        return stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lean = self.lean_stack
        if (
            lean is not None
            and scope["type"] == "http"
            and _TELEMETRY_SCOPE_KEY not in scope
            and MAX_BODY_SIZE_SCOPE_KEY not in scope
        ):
            # NOTE: what FastAPI's and Starlette's ``__call__`` do for such a request.
            if self.root_path:
                scope["root_path"] = self.root_path
            scope["app"] = self
            await lean(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _without_idle_layers(self, stack: ASGIApp) -> ASGIApp | None:
        """``stack`` without the pass-throughs this configuration leaves idle; None when
        there are none, or the stack is not built as FastAPI builds it."""
        telemetry = self._telemetry
        if telemetry["tracing"] or telemetry["metrics"] or telemetry["logs"]:
            return None
        if not isinstance(stack, ServerErrorMiddleware):
            return None
        inner = stack.app
        if isinstance(inner, ExceptionTelemetryMiddleware):
            inner = inner.app
        if AppBodyLimitMiddleware is not None and isinstance(inner, AppBodyLimitMiddleware):
            if self.max_body_size is not None:
                return None
            inner = inner.app
        if isinstance(inner, Observe):
            return inner
        if inner is stack.app:
            return None
        return ServerErrorMiddleware(inner, handler=stack.handler, debug=stack.debug)
