"""The other ways a reload starts: SIGHUP, and polling the manifest and weight files.

Both call the same ``ModelRepository.reload`` as the admin API, so they share its lock,
its all-or-nothing rule and its one log line per reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from registry.errors import RegistryError
from registry.repository.repository import ModelRepository
from registry.settings import Settings
from registry.tasks import Background
from registry.weightfiles import Stamp, stamp

log = logging.getLogger(__name__)


class ReloadTriggers:
    def __init__(
        self, repository: ModelRepository, settings: Settings, background: Background
    ) -> None:
        self._repository = repository
        self._settings = settings
        self._background = background
        self._sighup = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        except (RuntimeError, ValueError, NotImplementedError):
            # NOTE: only the main thread may own signals; under a test client it does not.
            log.debug("SIGHUP reload not installed: not running in the main thread")
        if self._settings.poll_interval_s > 0:
            poll = self._poll(self._settings.poll_interval_s)
            self._background.spawn(poll, name="manifest poller", forever=True)

    def _on_sighup(self) -> None:
        log.info("SIGHUP received; reloading")
        self._background.spawn(self._reload("signal"), name="SIGHUP reload", forever=True)

    def stop(self) -> None:
        """Stop taking signals; the background owner cancels the poller."""
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False

    async def _reload(self, actor: str) -> None:
        with contextlib.suppress(RegistryError):  # reload() has logged why
            await self._repository.reload(actor=actor)

    async def _poll(self, interval_s: float) -> None:
        """Reload once the manifest or a weight file has changed and then held still.

        NOTE: a change is applied only when two looks in a row agree, so a file caught
        mid-write (empty, or cut at a model boundary, which is still valid YAML) is never
        applied. A refused reload is tried again at the next tick.
        """
        await self._repository.wait_loaded()
        applied = previous = await self._signature()
        while True:
            await asyncio.sleep(interval_s)
            current = await self._signature()
            settled, previous = current == previous, current
            if current == applied or not settled:
                continue
            log.info("manifest or weights changed on disk and settled; reloading")
            try:
                await self._repository.reload(actor="poll")
            except RegistryError:
                continue  # reload() has logged why
            applied = current

    async def _signature(self) -> tuple[Stamp | None, ...]:
        """The stamps of the manifest and of every served weight file.

        NOTE: which files is read on the event loop, whose state the registry is (from
        another thread, a look could meet a set of versions being changed, and fail);
        the stamps are taken off it.
        """
        root = self._settings.weights_root
        paths = [self._settings.manifest]
        paths += [root / v.spec.path for v in self._repository.registry.status().versions()]
        return await asyncio.to_thread(_stamps, paths)


def _stamps(paths: list[Path]) -> tuple[Stamp | None, ...]:
    return tuple(_stamp(path) for path in paths)


def _stamp(path: Path) -> Stamp | None:
    try:
        return stamp(path)
    except OSError:
        return None
