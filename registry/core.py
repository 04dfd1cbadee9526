"""``ModelRegistry``: the one object per application that holds live models.

It keeps the table requests resolve against, counts their leases, swaps in a new table in
one assignment, keeps retired versions alive while requests still hold them, releases
them after (refunding their memory to the budget), evicts idle ones when asked, and
describes all of it as one ``status()`` snapshot. Finding models (reading the manifest,
planning, loading) is ``registry.repository``'s job: it builds tables and hands them to
``swap``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import TracebackType

from registry.budget import EvictionReason, MemoryBudget
from registry.errors import ShuttingDown
from registry.keys import VersionKey
from registry.model import LoadedModel
from registry.status import RegistryStatus, snapshot
from registry.table import (
    CARRIED,
    Table,
    VersionSlot,
    live_models,
    not_serving,
    resolve,
    same_place,
    with_slot,
)
from registry.tasks import Background
from registry.threads import WideThreads

log = logging.getLogger(__name__)


class ModelRegistry:
    """Holds the live table, leases versions to requests and releases retired ones."""

    def __init__(
        self,
        background: Background,
        budget: MemoryBudget | None = None,
        *,
        wide: WideThreads,
        after_release: Callable[[], None] = lambda: None,
    ) -> None:
        """``after_release`` runs after a version's memory is given back, and the versions
        started run passes on several torch threads only with a permit from ``wide``:
        process-wide policy (``heap.trim``, ``registry.threads``) the lifespan decides."""
        self._background = background
        self.budget = budget or MemoryBudget(None)
        self._after_release = after_release
        self.wide = wide
        self._table: Table = {}
        self._draining: set[LoadedModel] = set()
        """Retired versions that requests still hold (and evicted ones until released)."""
        self._loading: tuple[VersionKey, ...] = ()
        self._ready = False
        self._closing = False
        self._awaited: Counter[VersionKey] = Counter()
        """Requests waiting for a version to load: it is not idle until they lease it."""
        self.evictions: Counter[tuple[str, str]] = Counter()
        """(model, ``EvictionReason``) -> versions taken out of memory, for metrics."""

    @property
    def table(self) -> Table:
        return self._table

    @property
    def ready(self) -> bool:
        """Start-up loading finished and what it loaded is served; false once closing."""
        return self._ready and not self._closing

    @property
    def closing(self) -> bool:
        return self._closing

    def mark_ready(self) -> None:
        self._ready = True

    def status(self) -> RegistryStatus:
        """A frozen picture of every version: state, leases, queue, timings, memory."""
        return snapshot(self._table, self._draining, self._loading, self.ready, self.budget)

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

    def put(self, key: VersionKey, expected: VersionSlot, slot: VersionSlot) -> bool:
        """Swap ``slot`` in for ``key`` where ``expected`` still is, starting its model.

        A reload that changed only what needs no load leaves ``expected`` carried into a
        copy (``table.same_place``): ``slot`` goes there, with the copy's spec. Without
        that, a load under way would find its place gone and leave the copy ``loading``,
        with no load, for good.

        ``False`` when an unload, a reload or close replaced ``expected`` meanwhile: what
        the slot holds is then given back, unserved (a load that finished too late).
        """
        entry = self._table.get(key.model)
        current = entry.versions.get(key.version) if entry is not None else None
        if self._closing or current is None or not same_place(current, expected):
            if slot.model is not None:
                self.discard(slot.model)
            return False
        if current is not expected:
            slot = replace(slot, **{name: getattr(current, name) for name in CARRIED})
        if slot.model is not None:
            slot.model.start(self.wide)
        self.swap(with_slot(self._table, key, slot))
        return True

    def lease(self, name: str, version: str | None = None) -> Lease:
        """Resolve a ready version for a request, to hold with ``with``.

        ``version`` is a version, an alias, or ``None`` for the default. Raises at once when
        the version cannot serve (``NotLoaded`` where a request may load it). The lease
        keeps a version that a reload retires alive until the request is done with it.
        """
        if self._closing:
            raise ShuttingDown()
        entry, concrete = resolve(self._table, name, version)
        slot = entry.versions[concrete]
        model = slot.model
        if model is None:
            raise not_serving(VersionKey(name, concrete), slot)
        return Lease(self, model)

    @contextmanager
    def awaiting(self, key: VersionKey) -> Iterator[None]:
        """Mark a version as awaited by a request until it leases it.

        NOTE: a version loaded for waiting requests is idle until they wake up and lease
        it; without this, another load could evict it in between, and they would load it
        again, and again.
        """
        self._awaited[key] += 1
        try:
            yield
        finally:
            self._awaited[key] -= 1
            if not self._awaited[key]:
                del self._awaited[key]

    def idlest(self, device: str) -> LoadedModel | None:
        """The least recently used version on ``device`` that may be evicted now: served,
        not resident, no request holding it, queued for it or waiting for it to load."""
        candidates = [
            slot.model
            for entry in self._table.values()
            for slot in entry.versions.values()
            if slot.model is not None
            and not slot.model.leases
            and not slot.model.queue_depth
            and slot.model.key not in self._awaited
            and not entry.spec.pinned(slot.spec)
            and slot.model.charge is not None
            and slot.model.charge[0] == device
        ]
        return min(candidates, key=lambda model: model.last_used, default=None)

    async def evict(self, model: LoadedModel, why: str) -> None:
        """Take an idle version out of memory and wait until its memory is given back.

        It stays in the table, unloaded, and a request loads it again (``on_demand``).
        """
        slot = self._table[model.name].versions[model.version]
        if slot.model is not model or model.leases:
            raise RuntimeError(f"{model.key} is not an idle version of the table")
        self._evicted(model, EvictionReason.MEMORY_BUDGET, why)
        unloaded = replace(
            slot, model=None, unloaded=True, on_demand=True, last_eviction=model.evicted
        )
        self._table = with_slot(self._table, model.key, unloaded)
        model.retired = True
        self._draining.add(model)
        await self._release(model)

    def unload(self, key: VersionKey, *, on_demand: bool) -> None:
        """An operator's unload: out of the table now, released once no request holds it."""
        slot = self._table[key.model].versions[key.version]
        model = slot.model
        unloaded = replace(
            slot, model=None, error=None, unloaded=True, on_demand=on_demand, failures=0
        )
        if model is not None:
            self._evicted(model, EvictionReason.UNLOAD, "requested through the management API")
            unloaded = replace(unloaded, last_eviction=model.evicted)
        self.swap(with_slot(self._table, key, unloaded))

    def _evicted(self, model: LoadedModel, reason: EvictionReason, why: str) -> None:
        """Mark ``model`` as leaving memory for ``reason``: counted, and one log line."""
        model.evicted = reason
        self.evictions[model.name, reason] += 1
        log.info(
            "evicted %s (%d bytes, idle %.1f s, reason %s): %s",
            model.key,
            model.memory_bytes,
            time.monotonic() - model.last_used,
            reason,
            why,
        )

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
        self.discard(model)
        self._draining.discard(model)
        self._after_release()
        log.info("released %s", model.key)

    def discard(self, model: LoadedModel) -> None:
        """Give a version's memory back and refund its charge: one that was retired and
        stopped, or one loaded that was never served."""
        model.release()
        if model.charge is not None:
            self.budget.refund(*model.charge)
            model.charge = None

    async def close(self) -> None:
        """Stop every batcher and drop every model; later leases and swaps are refused."""
        self._closing = True
        models = live_models(self._table) + list(self._draining)
        self._table, self._draining = {}, set()
        for model in models:
            await model.stop()
            self.discard(model)
        log.info("registry closed: every model released")


class Lease:
    """A request's hold on a version: it counts while the ``with`` block runs."""

    __slots__ = ("_model", "_registry")

    def __init__(self, registry: ModelRegistry, model: LoadedModel) -> None:
        self._registry = registry
        self._model = model

    def __enter__(self) -> LoadedModel:
        model = self._model
        model.leases += 1
        model.last_used = time.monotonic()
        return model

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        model = self._model
        model.leases -= 1
        if model.retired:
            self._registry._release_when_idle(model)
