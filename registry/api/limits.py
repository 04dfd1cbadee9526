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
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api.asgi import header
from registry.api.errors import answer_error
from registry.codec import parse_count
from registry.errors import PayloadTooLarge, RegistryError, RequestTimeout
from registry.settings import Settings

_Task = asyncio.Task[Any]
_EARLY_S = 0.001  # NOTE: a timer may fire up to the clock's resolution before its time


class Deadlines:
    """Body reads in progress, and one timer that cancels those past their deadline.

    An ``asyncio.timeout`` per request arms and cancels a timer handle each time, several
    microseconds, as much as the rest of the fast path's own work for a small model. Here
    a read registers its task in a dict; one timer, armed only while some read is in
    progress and always for the earliest deadline, cancels the late ones. A reader that
    catches ``CancelledError`` asks ``timed_out`` whether the cancellation was this one's
    (then it is undone, and the reader answers 408) or someone else's (re-raise it).
    """

    def __init__(self) -> None:
        self._reading: dict[_Task, float] = {}
        self._expired: set[_Task] = set()
        self._timer: asyncio.TimerHandle | None = None

    @staticmethod
    def after(timeout_s: float) -> float:
        """The deadline ``timeout_s`` from now, on the running loop's clock."""
        return asyncio.get_running_loop().time() + timeout_s

    def watch(self, deadline: float) -> _Task:
        """Register the current task until ``unwatch``; it is cancelled past ``deadline``."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - only ever called from a request's task
            raise RuntimeError("Deadlines.watch() needs a running task")
        self._reading[task] = deadline
        if self._timer is None:
            self._arm(task.get_loop(), deadline)
        return task

    def unwatch(self, task: _Task) -> None:
        # NOTE: the timer stays armed; when it fires with nothing late, it re-arms or stops.
        self._reading.pop(task, None)
        self._expired.discard(task)

    def timed_out(self, task: _Task) -> bool:
        """Whether ``task``'s ``CancelledError`` is its deadline's; if so, it is undone."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        # NOTE: a cancellation from elsewhere too (the server's, at shutdown) still stands.
        return task.uncancel() == 0

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time() + _EARLY_S
        earliest: float | None = None
        for task, deadline in self._reading.items():
            if task in self._expired:
                continue
            if deadline <= now:
                self._expired.add(task)
                task.cancel("request body deadline")
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._arm(loop, earliest)


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
        self.deadlines = Deadlines()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(PayloadTooLarge(limit), scope, receive, send)
            return
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


def declared_length(scope: Scope) -> int | None:
    """The declared ``Content-Length``, if it is a count (else the body is counted as read)."""
    value = header(scope, b"content-length")
    return parse_count(value) if value is not None else None
