"""``Background``: the one owner of the application's background tasks.

Start-up loading, the start-up supervisor, the manifest poller, SIGHUP reloads and the
release of retired versions all run as tasks beside the requests. Each is spawned here, so
shutdown has one place that cancels what runs forever and awaits everything, and no task
is left pending (or its exception unseen) when the event loop closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Background:
    def __init__(self) -> None:
        self._awaited: set[asyncio.Task[Any]] = set()
        self._cancelled: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coroutine: Coroutine[Any, Any, T], *, name: str, forever: bool = False
    ) -> asyncio.Task[T]:
        """Run ``coroutine`` as a task; ``forever`` ones are cancelled at close, the rest
        awaited to their end."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        tasks = self._cancelled if forever else self._awaited
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def settled(self) -> None:
        """Wait for every task that is not meant to run forever (releases, loading)."""
        while self._awaited:
            await asyncio.gather(*self._awaited, return_exceptions=True)

    async def close(self) -> None:
        """Cancel what runs forever, then wait for every task to end."""
        for task in self._cancelled:
            task.cancel()
        await asyncio.gather(*self._cancelled, return_exceptions=True)
        await self.settled()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %s failed", task.get_name(), exc_info=error)
