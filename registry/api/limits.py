"""Refuse oversized bodies before they are buffered: a pure ASGI middleware.

The declared ``Content-Length`` is checked up front; a chunked body (or one that lies
about its length) is counted as it streams and cut off at the limit, so a client cannot
make the server hold more than ``max_body_bytes`` of one request in memory.
"""

from __future__ import annotations

import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api.asgi import header
from registry.api.errors import error_response
from registry.errors import PayloadTooLarge


class BodyTooLarge(Exception):
    """Raised from ``receive`` past the limit; never reaches a client as such."""


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await self._reject(scope, receive, send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                # NOTE: a route may have turned BodyTooLarge into its own 400; 413 wins.
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if exceeded and not response_started:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = too_large(self.max_body_bytes)
        response = error_response(
            error.status_code,
            error.code,
            error.message,
            {"Connection": "close"},
            path=scope["path"],
            max_body_bytes=self.max_body_bytes,
        )
        await response(scope, receive, send)


def declared_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds {limit} bytes", max_body_bytes=limit)
