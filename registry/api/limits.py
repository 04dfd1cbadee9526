"""Refuse oversized or slow bodies before they are buffered or wait forever: pure ASGI.

The declared ``Content-Length`` is checked up front; a chunked body (or one that lies
about its length) is counted as it streams and cut off at the limit, so a client cannot
make the server hold more than ``max_body_bytes`` of one request in memory. A body must
also arrive whole within ``REGISTRY_BODY_TIMEOUT_S`` of the first read, or the request is
answered 408 and the connection closed, so a client trickling bytes cannot hold a
connection (and, before this, a model) for ever.

It sits outside the predict fast path, so both doors read their bodies through it (the
fast path calls the routes' own body dependency), and a refusal is answered by the
application's own handler for the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api.encoding import Inflater, coding_of
from registry.api.errors import answer_error
from registry.codec import parse_count
from registry.deadlines import Deadlines
from registry.errors import PayloadTooLarge, RegistryError, RequestTimeout
from registry.settings import Settings


async def _dropped() -> None:
    """What sending a message that is not sent awaits."""


class _Refused(Exception):
    """Raised from ``receive`` to stop the app; never reaches a client as such."""


class BodySizeLimit:
    """The size limit and the deadline for every route that reads a body.

    The deadline is the application's ``Settings.body_timeout_s``, read from the request's
    lifespan state, as the routes read their settings.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.deadlines = Deadlines("request body deadline")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared, encoding = framing(scope)
        if declared is not None and declared > limit:
            await self._refuse(PayloadTooLarge(limit), scope, receive, send)
            return
        inflater: Inflater | None = None
        if encoding is not None:
            try:
                coding = coding_of(encoding)
            except RegistryError as exc:
                await self._refuse(exc, scope, receive, send)
                return
            if coding is not None:
                inflater = Inflater(coding, limit)
                # NOTE: what the routes read is the body inflated, of a length unknown yet
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in _FRAMING]
        settings: Settings | None = scope.get("state", {}).get("settings")
        timeout_s = settings.body_timeout_s if settings is not None else None
        deadlines = self.deadlines
        deadline: float | None = None
        received = 0
        complete = False
        refusal: RegistryError | None = None
        response_started = False

        async def guarded_receive() -> Message:
            nonlocal deadline, received, complete, refusal
            if complete or timeout_s is None:
                message = await receive()
            else:
                if deadline is None:
                    deadline = deadlines.after(timeout_s)
                # NOTE: the deadline's watch inline, not a coroutine of its own per message.
                task = deadlines.watch(deadline)
                try:
                    message = await receive()
                except asyncio.CancelledError:
                    if deadlines.timed_out(task):
                        refusal = RequestTimeout(timeout_s)
                        raise _Refused from None
                    raise
                finally:
                    deadlines.unwatch(task)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refusal = PayloadTooLarge(limit)
                    raise _Refused
                complete = not message.get("more_body", False)
                if inflater is not None:
                    try:
                        body = inflater.feed(message.get("body", b""), last=complete)
                    except RegistryError as exc:
                        refusal = exc
                        raise _Refused from None
                    message = {**message, "body": body}
            return message

        def guarded_send(message: Message) -> Awaitable[None]:
            # NOTE: a plain function handing back ``send``'s awaitable: no coroutine of its
            # own per message on every response.
            nonlocal response_started
            if refusal is not None and not response_started:
                # NOTE: a route may have turned _Refused into its own 400 or 500; ours wins.
                return _dropped()
            if message["type"] == "http.response.start":
                response_started = True
            return send(message)

        try:  # noqa: SIM105 - contextlib.suppress is an object and two calls per request
            await self.app(scope, guarded_receive, guarded_send)
        except _Refused:
            pass
        if refusal is not None and not response_started:
            await self._refuse(refusal, scope, receive, send)

    async def _refuse(
        self, error: RegistryError, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if not await answer_error(error, scope, receive, send):
            raise error


_FRAMING = (b"content-length", b"content-encoding")


def framing(scope: Scope) -> tuple[int | None, str | None]:
    """The request's declared ``Content-Length`` and its ``Content-Encoding`` (the first
    of each), in one pass over its headers. A length that is not a count
    (``parse_count``) is None, as is one not sent: the body is then counted as it is read."""
    length = encoding = None
    for key, value in scope["headers"]:
        if key == b"content-length" and length is None:
            length = value.decode("latin-1")
        elif key == b"content-encoding" and encoding is None:
            encoding = value.decode("latin-1")
    return (parse_count(length) if length is not None else None), encoding
