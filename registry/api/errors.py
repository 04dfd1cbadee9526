"""The exception handlers; every error leaves as ``{"error": {code, message, ...}}``.

Except under ``/v2/``: the Open Inference Protocol fixes its error body as
``{"error": "<message>"}``, so the path decides the shape, in ``error_response`` alone:
the path the routes match, below any prefix the app is mounted under.

The handlers are the application's (``create_app`` installs ``EXCEPTION_HANDLERS``), and
every layer that answers an error itself (the body limit, the fast path, ``Observe``)
asks ``answer_error`` for the application's own handler, so a handler changed on the app
changes every door.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from registry.api.asgi import get_route_path
from registry.codec import dumps
from registry.errors import (
    PayloadTooLarge,
    RegistryError,
    RequestTimeout,
    Unauthorized,
    Unavailable,
)
from registry.logs import request_id

log = logging.getLogger(__name__)

# NOTE: the rest of such a body is never read; the connection is closed, not kept alive.
_ENDS_CONNECTION = (PayloadTooLarge, RequestTimeout)


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    path: str,
    **details: Any,
) -> Response:
    error = message if path.startswith("/v2/") else {"code": code, "message": message, **details}
    body = dumps({"error": error})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def render_registry_error(exc: RegistryError, request: Request) -> Response:
    """The envelope for a domain error; a server fault is also logged with the request id.

    503s (loading, queue full, draining) are expected states, not faults: not logged.
    A refused body (413, 408) closes the connection.
    """
    headers = None
    if isinstance(exc, Unavailable):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, _ENDS_CONNECTION):
        headers = {"Connection": "close"}
    if exc.status_code >= 500 and not isinstance(exc, Unavailable):
        log.error(
            "%s %s failed: %s: %s",
            request.method,
            request.url.path,
            exc.code,
            exc.message,
            extra={"request_id": request_id.get()},
        )
    return error_response(
        exc.status_code,
        exc.code,
        exc.message,
        headers,
        path=get_route_path(request.scope),
        **exc.details,
    )


async def _registry_error(request: Request, exc: RegistryError) -> Response:
    return render_registry_error(exc, request)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = [
        {"loc": list(e["loc"]), "message": e["msg"], "type": e["type"]} for e in exc.errors()
    ]
    return error_response(
        422,
        "invalid_request",
        "the request is invalid",
        path=get_route_path(request.scope),
        problems=problems,
    )


async def _http_error(request: Request, exc: HTTPException) -> Response:
    status = HTTPStatus(exc.status_code)
    code = status.phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail if isinstance(exc.detail, str) else status.phrase
    return error_response(
        exc.status_code, code, message, exc.headers, path=get_route_path(request.scope)
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: 500 ``internal``, the traceback in the log (with the request id), not sent."""
    log.error(
        "%s %s failed unexpectedly",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": request_id.get()},
    )
    return error_response(
        500, "internal", "internal server error", path=get_route_path(request.scope)
    )


ExceptionHandler = Callable[[Request, Any], Coroutine[Any, Any, Response]]

EXCEPTION_HANDLERS: dict[int | type[Exception], ExceptionHandler] = {
    RegistryError: _registry_error,
    RequestValidationError: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected_error,
}

_UNEXPECTED = (500, Exception)  # NOTE: Starlette gives these to ServerErrorMiddleware


def handler_for(
    handlers: Mapping[Any, Callable[..., Any]], exc: Exception, *, unexpected: bool = False
) -> Callable[..., Any] | None:
    """The handler Starlette would pick for ``exc`` from an application's handlers.

    As its ``ExceptionMiddleware``: an ``HTTPException``'s status code first, then the
    nearest class in ``exc``'s MRO; the 500/``Exception`` handler is not among these (None).
    ``unexpected=True`` asks for that one instead, as ``ServerErrorMiddleware`` holds it.
    """
    if unexpected:
        return handlers.get(Exception) or handlers.get(500)
    if isinstance(exc, HTTPException) and exc.status_code != 500:
        by_status = handlers.get(exc.status_code)
        if by_status is not None:
            return by_status
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return None if cls in _UNEXPECTED else handler
    return None


def app_handlers(scope: Scope) -> Mapping[Any, Callable[..., Any]]:
    """The handlers of the application serving ``scope`` (ours when there is none)."""
    handlers = getattr(scope.get("app"), "exception_handlers", None)
    return handlers if handlers is not None else EXCEPTION_HANDLERS


async def answer_error(
    exc: Exception,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    request: Request | None = None,
    unexpected: bool = False,
) -> bool:
    """Send what the application's handler for ``exc`` answers; False when none applies."""
    handler = handler_for(app_handlers(scope), exc, unexpected=unexpected)
    if handler is None:
        return False
    request = request or Request(scope, receive)
    if inspect.iscoroutinefunction(handler):
        response = await handler(request, exc)
    else:
        response = await run_in_threadpool(handler, request, exc)
    if response is not None:
        await response(scope, receive, send)
    return True
