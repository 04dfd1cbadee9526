"""The three exception handlers; every error leaves as ``{"error": {code, message, ...}}``.

Except under ``/v2/``: the Open Inference Protocol fixes its error body as
``{"error": "<message>"}``, so the path decides the shape, in ``error_response`` alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import Request

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


def render_registry_error(exc: RegistryError, method: str, path: str) -> Response:
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
            method,
            path,
            exc.code,
            exc.message,
            extra={"request_id": request_id.get()},
        )
    return error_response(exc.status_code, exc.code, exc.message, headers, path=path, **exc.details)


async def _registry_error(request: Request, exc: RegistryError) -> Response:
    return render_registry_error(exc, request.method, request.url.path)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = [
        {"loc": list(e["loc"]), "message": e["msg"], "type": e["type"]} for e in exc.errors()
    ]
    return error_response(
        422, "invalid_request", "the request is invalid", path=request.url.path, problems=problems
    )


async def _http_error(request: Request, exc: HTTPException) -> Response:
    status = HTTPStatus(exc.status_code)
    code = status.phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail if isinstance(exc.detail, str) else status.phrase
    return error_response(exc.status_code, code, message, exc.headers, path=request.url.path)


ExceptionHandler = Callable[[Request, Any], Coroutine[Any, Any, Response]]

EXCEPTION_HANDLERS: dict[int | type[Exception], ExceptionHandler] = {
    RegistryError: _registry_error,
    RequestValidationError: _validation_error,
    HTTPException: _http_error,
}
