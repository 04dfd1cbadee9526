"""A connection must send its request's line and headers in time, or it is closed.

uvicorn bounds only the wait between requests on a kept-alive connection, and any byte
cancels that: a connection that never sends a request, or sends its headers a byte at a
time, stays open for good. Each counts against ``REGISTRY_MAX_CONNECTIONS`` (uvicorn's
``limit_concurrency``), so a few hundred such sockets would have every other client
answered 503 for as long as they stay. The body has its own bound
(``REGISTRY_BODY_TIMEOUT_S``, the application's); this is the one before it.

So ``registry serve`` runs uvicorn's own protocol with one more rule: the headers must be
complete within ``REGISTRY_HEADER_TIMEOUT_S`` of the connection opening, or of the first
byte of each later request (the wait before that byte is the keep-alive's). One timer per
event loop sweeps the open connections, rather than one per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.auto import AutoHTTPProtocol

_SWEEPS_PER_TIMEOUT = 4  # NOTE: so a late connection is closed within 1.25 timeouts


class HeaderDeadlineProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (httptools, else h11), closing a connection whose request
    headers are late; ``with_header_timeout`` makes one for a timeout."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.waiting_since: float | None = self.loop.time()
        _Sweeper.watch(self.loop, self.connections, self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.waiting_since is None:  # NOTE: a later request's first bytes
            self.waiting_since = self.loop.time()
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self.waiting_since = None  # NOTE: its headers are in: a request runs

    def headers_late(self, now: float) -> bool:
        """Whether this connection waited longer than allowed for a request's headers."""
        since = self.waiting_since
        cycle = self.cycle
        return (
            since is not None
            and now - since > self.header_timeout_s
            and (cycle is None or cycle.response_complete)
        )


def with_header_timeout(timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's ``http``, with this header timeout."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout_s": timeout_s})


class _Sweeper:
    """On one loop: every so often, close the connections whose headers are late."""

    _running: ClassVar[dict[asyncio.AbstractEventLoop, _Sweeper]] = {}

    def __init__(
        self, loop: asyncio.AbstractEventLoop, connections: set[Any], timeout_s: float
    ) -> None:
        self._loop = loop
        self._connections = connections
        self._every_s = timeout_s / _SWEEPS_PER_TIMEOUT
        self._loop.call_later(self._every_s, self._sweep)

    @classmethod
    def watch(
        cls, loop: asyncio.AbstractEventLoop, connections: set[Any], timeout_s: float
    ) -> None:
        if loop not in cls._running:
            cls._running[loop] = cls(loop, connections, timeout_s)

    def _sweep(self) -> None:
        now = self._loop.time()
        for connection in list(self._connections):
            if isinstance(connection, HeaderDeadlineProtocol) and connection.headers_late(now):
                connection.transport.close()
        if self._connections:
            self._loop.call_later(self._every_s, self._sweep)
        else:  # NOTE: nothing left to watch; the next connection starts a sweeper again
            del self._running[self._loop]
