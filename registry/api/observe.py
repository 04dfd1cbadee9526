"""Request ids, prediction metrics and the access log, in one pure ASGI middleware.

One pass around each request: take ``X-Request-ID`` or make one, echo it, time the
request, and, for prediction routes, count it by model, version and status. Which paths
are predictions comes from the application's routes (the native predict routes and the V2
``infer`` routes), so a renamed or added one is counted without a change here.

It is the outermost of the application's own middleware. Starlette's
``ServerErrorMiddleware``, which FastAPI puts outside it, would answer an unexpected
exception with no request id and reach no metric: so an exception that gets here is
answered here, by the application's handler for ``Exception`` (a JSON 500 envelope, the
traceback logged with the request id), and the connection is kept. That leaves the
middleware nothing to do, and ``registry.api.application`` serves requests without it.

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
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api.asgi import FromRoutes, get_route_path, header
from registry.api.errors import answer_error
from registry.api.routes import predict
from registry.errors import ShuttingDown
from registry.logs import request_id
from registry.metrics import UNKNOWN, Metrics

access_log = logging.getLogger("registry.access")
_ACCEPTABLE_ID = re.compile(r"[\w.:/+=-]{1,128}", re.ASCII)
"""An incoming ``X-Request-ID`` that is echoed and logged as it came: ASCII letters, digits
and a few marks, matched whole (``$`` would let a final newline through)."""


class Observe:
    def __init__(self, app: ASGIApp, *, log_requests: bool) -> None:
        self.app = app
        self.log_requests = log_requests
        # NOTE: a random per-app prefix and a counter: unique, and far cheaper than uuid4.
        prefix = secrets.token_hex(8)
        self._fresh_ids = (f"{prefix}{n:016x}" for n in itertools.count())
        self._predictions = FromRoutes(Predictions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = header(scope, b"x-request-id")
        rid = incoming if incoming and _ACCEPTABLE_ID.fullmatch(incoming) else next(self._fresh_ids)
        token = request_id.set(rid)
        status = 500
        responded = False

        def send_with_id(message: Message) -> Awaitable[None]:
            # NOTE: hands back ``send``'s awaitable: no coroutine of its own per message.
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            return send(message)

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
                error = ShuttingDown()

                async def closing(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        message["headers"] = [*message["headers"], (b"connection", b"close")]
                    await send_with_id(message)

                await answer_error(error, scope, receive, closing)
        except Exception as exc:
            # NOTE: a bug must cost one request, never the connection or the process.
            if responded or not await answer_error(
                exc, scope, receive, send_with_id, unexpected=True
            ):
                raise
        finally:
            elapsed = time.perf_counter() - started
            # NOTE: a POST that leased a model is a prediction; the routes decide the rest.
            counted = scope["method"] == "POST" and (
                "served" in scope.get("state", ()) or self._is_prediction(scope)
            )
            logged = self.log_requests or (status >= 500 and status != 503)
            if counted or logged:
                model, version = _served(scope)
                metrics: Metrics | None = scope.get("state", {}).get("metrics")
                if counted and metrics is not None:
                    metrics.observe(model, version, status, elapsed)
                if logged:
                    _log_request(scope, status, elapsed, model, version)
            request_id.reset(token)

    def _is_prediction(self, scope: Scope) -> bool:
        predictions = self._predictions(scope)
        return predictions is not None and get_route_path(scope) in predictions


class Predictions:
    """The paths the request metrics count, as the app's routes match them: the native
    predict routes and the V2 ``infer`` ones. Answers are remembered per path, up to a
    bound (paths are the clients' to choose)."""

    _REMEMBERED = 4096

    def __init__(self, app: Any) -> None:
        self.matchers: tuple[Callable[[str], object], ...] = tuple(
            route.path_regex.match
            for route in iter_route_contexts(app.router.routes)
            if isinstance(route.original_route, APIRoute)
            and "POST" in (route.methods or ())
            and (route.endpoint in predict.ENDPOINTS or _is_v2_infer(route.path or ""))
        )
        self._seen: dict[str, bool] = {}

    def __contains__(self, path: str) -> bool:
        known = self._seen.get(path)
        if known is None:
            known = any(match(path) for match in self.matchers)
            if len(self._seen) < self._REMEMBERED:
                self._seen[path] = known
        return known


def _is_v2_infer(path: str) -> bool:
    # NOTE: by its path template, as routes/v2.py names no endpoints for this.
    return path.startswith("/v2/") and path.endswith("/infer")


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
    path = _CONTROL.sub(_escaped, scope["path"])
    access_log.log(
        level, "%s %s %d %.1f ms", scope["method"], path, status, duration_ms, extra=extra
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""In a path as decoded from ``%0A`` and the like: left as they are, a client could end the
line it is logged on and write one of its own (uvicorn's CVE-2020-7694). JSON lines escape
them already; ``extra`` keeps the path as it came."""


def _escaped(found: re.Match[str]) -> str:
    return f"\\x{ord(found.group()):02x}"
