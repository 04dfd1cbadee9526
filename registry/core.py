"""``ModelRegistry``: the one object per application that holds live models.

It keeps the table requests resolve against, counts their leases, swaps in a new table in
one assignment, keeps retired versions alive while requests still hold them, releases
them after, and describes all of it as one ``status()`` snapshot. Finding models (reading
the manifest, planning, loading) is ``registry.repository``'s job: it builds tables and
hands them to ``swap``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from registry.errors import ShuttingDown
from registry.keys import VersionKey
from registry.model import LoadedModel
from registry.status import RegistryStatus, snapshot
from registry.table import Table, live_models, not_serving, resolve
from registry.tasks import Background

log = logging.getLogger(__name__)


class ModelRegistry:
    """Holds the live table, leases versions to requests and releases retired ones."""

    def __init__(self, background: Background) -> None:
        self._background = background
        self._table: Table = {}
        self._draining: set[LoadedModel] = set()
        self._loading: tuple[VersionKey, ...] = ()
        self._ready = False
        self._closing = False

    @property
    def table(self) -> Table:
        return self._table

    @property
    def ready(self) -> bool:
        """Start-up loading finished and what it loaded is served; false once closing."""
        return self._ready and not self._closing

    def mark_ready(self) -> None:
        self._ready = True

    def status(self) -> RegistryStatus:
        """A frozen picture of every version: state, leases, queue, timings, memory."""
        return snapshot(self._table, self._draining, self._loading, self.ready)

    @contextmanager
    def loading(self, keys: tuple[VersionKey, ...]) -> Iterator[None]:
        """Say, for the status, which versions a reload is loading beside the live ones."""
        self._loading = keys
        try:
            yield
        finally:
            self._loading = ()

    def swap(self, table: Table) -> None:
        """Replace the table in one assignment, then retire what the new one dropped.

        Versions new to ``table`` must be started (``LoadedModel.start``) by the caller.
        """
        if self._closing:
            raise ShuttingDown()
        old, self._table = self._table, table
        kept = {id(model) for model in live_models(table)}
        for model in live_models(old):
            if id(model) not in kept:
                model.retired = True
                self._release_when_idle(model)

    @contextmanager
    def lease(self, name: str, version: str | None = None) -> Iterator[LoadedModel]:
        """Hold a ready version for the length of a request.

        ``version`` is a version, an alias, or ``None`` for the default. The lease keeps a
        version that a reload retires alive until the request is done with it.
        """
        if self._closing:
            raise ShuttingDown()
        entry, concrete = resolve(self._table, name, version)
        slot = entry.versions[concrete]
        model = slot.model
        if model is None:
            raise not_serving(VersionKey(name, concrete), slot.state, slot.error)
        model.leases += 1
        try:
            yield model
        finally:
            model.leases -= 1
            if model.retired:
                self._release_when_idle(model)

    def _release_when_idle(self, model: LoadedModel) -> None:
        """Release a retired version now, or keep it draining while requests hold it.

        NOTE: a retired version is out of the table, so its leases only ever go down and
        reach zero at most once.
        """
        if model.leases:
            self._draining.add(model)
            return
        self._draining.discard(model)
        self._background.spawn(self._release(model), name=f"release {model.key}")

    async def _release(self, model: LoadedModel) -> None:
        await model.stop()
        model.release()
        log.info("released %s", model.key)

    async def close(self) -> None:
        """Stop every batcher and drop every model; later leases and swaps are refused."""
        self._closing = True
        models = live_models(self._table) + list(self._draining)
        self._table, self._draining = {}, set()
        for model in models:
            await model.stop()
            model.release()
        log.info("registry closed: every model released")
