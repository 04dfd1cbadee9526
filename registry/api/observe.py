"""Request ids, prediction metrics and the access log, in one pure ASGI middleware.

One pass around each request: take ``X-Request-ID`` or make one, echo it, time the
request, and, for prediction routes, count it by model, version and status.

Two outcomes are not server faults and are never counted or logged as 5xx: a client that
hangs up before its body arrived is recorded as nginx's 499 (``ClientClosedRequest``),
and a request that the server itself gives up on at shutdown, once the drain time is
spent, is answered 503 ``shutting_down`` instead of a 500 with a ``CancelledError``
traceback.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api.asgi import header, is_prediction
from registry.api.errors import render_registry_error
from registry.errors import ShuttingDown
from registry.logs import request_id
from registry.metrics import UNKNOWN, Metrics

access_log = logging.getLogger("registry.access")
_ACCEPTABLE_ID = re.compile(r"^[\w.:/+=-]{1,128}$")  # NOTE: never echo header injection


class Observe:
    def __init__(self, app: ASGIApp, *, log_requests: bool) -> None:
        self.app = app
        self.log_requests = log_requests
        # NOTE: a random per-app prefix and a counter: unique, and far cheaper than uuid4.
        prefix = secrets.token_hex(8)
        self._fresh_ids = (f"{prefix}{n:016x}" for n in itertools.count())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = header(scope, b"x-request-id")
        rid = incoming if incoming and _ACCEPTABLE_ID.match(incoming) else next(self._fresh_ids)
        token = request_id.set(rid)
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # NOTE: only the server cancels a request's task: uvicorn, once the drain time
            # is spent at shutdown. Everything below has unwound (leases returned); what is
            # left is to answer, if nothing was sent yet, and end the task cleanly rather
            # than hand the server a CancelledError to log as a 500 with its traceback.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if not responded:
                error = ShuttingDown("the server is shutting down")
                response = render_registry_error(error, scope["method"], scope["path"])
                response.headers["Connection"] = "close"
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            counted = scope["method"] == "POST" and is_prediction(scope["path"])
            logged = self.log_requests or (status >= 500 and status != 503)
            if counted or logged:
                model, version = _served(scope)
                metrics: Metrics | None = scope.get("state", {}).get("metrics")
                if counted and metrics is not None:
                    metrics.observe(model, version, status, elapsed)
                if logged:
                    _log_request(scope, status, elapsed, model, version)
            request_id.reset(token)


def _served(scope: Scope) -> tuple[str, str]:
    """The model and concrete version that answered, as the model dependency recorded."""
    served: Any = scope.get("state", {}).get("served")
    if isinstance(served, tuple):
        return str(served[0]), str(served[1])
    return UNKNOWN, UNKNOWN


def _log_request(scope: Scope, status: int, elapsed: float, model: str, version: str) -> None:
    duration_ms = round(elapsed * 1000, 3)
    extra = {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_ms": duration_ms,
    }
    if model != UNKNOWN:
        extra |= {"model": model, "version": version}
    level = logging.ERROR if status >= 500 else logging.INFO
    access_log.log(
        level, "%s %s %d %.1f ms", scope["method"], scope["path"], status, duration_ms, extra=extra
    )
