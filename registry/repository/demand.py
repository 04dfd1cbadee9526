"""``OnDemand``: loads and unloads single versions while the server runs.

A request for a version that is not in memory (lazy, or evicted to make room) and the
management API's ``load`` both come here. However many ask at once, a version has one load
in flight, and every caller waits on that one. A load that fails is remembered with its
reason and tried again by requests only after a back-off that doubles with each failure
(1 s up to a minute); an operator's ``load`` tries at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from registry.core import Lease, ModelRegistry
from registry.errors import (
    MemoryBudgetExceeded,
    ModelLoading,
    NotLoaded,
    RegistryError,
    ShuttingDown,
)
from registry.keys import VersionKey
from registry.repository.loader import Loader
from registry.repository.planning import loaded_fingerprint
from registry.table import VersionState, not_serving, resolve, with_slot
from registry.tasks import Background

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


def backoff_s(failures: int) -> float:
    """Seconds before the next load on demand, after ``failures`` failures in a row."""
    return min(MAX_BACKOFF_S, 2.0 ** (failures - 1))


class OnDemand:
    def __init__(
        self, registry: ModelRegistry, loader: Loader, background: Background, wait_s: float
    ):
        """``wait_s``: how long a request waits for its load (``REGISTRY_LOAD_WAIT_S``)."""
        self._wait_s = wait_s
        self._registry = registry
        self._loader = loader
        self._background = background
        self._flights: dict[VersionKey, asyncio.Task[RegistryError | None]] = {}

    def key(self, name: str, version: str | None) -> VersionKey:
        """The concrete version a name and a version or alias (or the default) mean;
        404 for what the manifest lacks."""
        _, concrete = resolve(self._registry.table, name, version)
        return VersionKey(name, concrete)

    def versions(self, name: str) -> list[VersionKey]:
        """Every version of a model; 404 for a model the manifest lacks."""
        entry, _ = resolve(self._registry.table, name, None)
        return [VersionKey(name, slot.spec.version) for slot in entry.sorted_versions()]

    async def lease(self, name: str, version: str | None) -> Lease:
        """A request's lease on a version (``None``: the default), as both doors take it:
        at once when it is in memory, else once it is loaded (one load however many ask),
        waiting at most ``wait_s``."""
        try:
            return self._registry.lease(name, version)
        except NotLoaded as missing:
            return await self._lease_once_loaded(name, version, missing.key)

    async def _lease_once_loaded(self, name: str, version: str | None, key: VersionKey) -> Lease:
        """Load a version that is not in memory (``key``: what ``name`` and ``version``
        resolved to), then lease it.

        NOTE: the version counts as awaited meanwhile, so other loads do not evict it
        between its load and this lease; an unload, or a reload that changes it, may
        still, and then it is loaded again until ``wait_s`` runs out.
        """
        deadline = time.monotonic() + self._wait_s
        with self._registry.awaiting(key):
            while True:
                try:
                    return self._registry.lease(name, version)
                except NotLoaded as missing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ModelLoading(missing.key) from None
                    await self.for_request(missing.key, left)

    async def for_request(self, key: VersionKey, wait_s: float) -> None:
        """Load ``key`` for a request, waiting at most ``wait_s``.

        Returns once it is in memory (a lease may still find it evicted again, and call
        again); raises ``ModelLoading`` when the load outlasts the wait, and the reason a
        load failed or cannot start (back-off, budget, an operator's unload).
        """
        flight = self._flight(key, on_request=True)
        try:
            error = await asyncio.wait_for(asyncio.shield(flight), wait_s)
        except TimeoutError:
            raise ModelLoading(key) from None
        if error is not None:
            raise error

    async def load(self, key: VersionKey) -> None:
        """An operator's load: now, whatever the back-off, and waiting for its end."""
        if (flight := self._flights.get(key)) is not None:
            await asyncio.shield(flight)  # NOTE: a request's load, which may have refused
        error = await asyncio.shield(self._flight(key, on_request=False))
        if error is not None:
            raise error

    def unload(self, key: VersionKey) -> None:
        """An operator's unload: out of the table now, its memory given back once no
        request holds it. A lazy version loads again on its next request."""
        entry = self._registry.table[key.model]
        slot = entry.versions[key.version]
        lazy = entry.spec.lazy(slot.spec)
        if slot.state is VersionState.UNLOADED and slot.on_demand == lazy:
            return  # NOTE: an evicted eager version is not: requests would load it again
        if slot.state is VersionState.LOADING and not self._flights.get(key):
            raise ModelLoading(key)  # NOTE: start-up loads it; start-up wins
        self._registry.unload(key, on_demand=lazy)

    def _flight(self, key: VersionKey, *, on_request: bool) -> asyncio.Task[RegistryError | None]:
        flight = self._flights.get(key)
        if flight is None:
            flight = self._background.spawn(self._fly(key, on_request), name=f"load {key}")
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        return flight

    async def _fly(self, key: VersionKey, on_request: bool) -> RegistryError | None:
        """Load one version and swap it in: the error for every waiter, or ``None``."""
        entry = self._registry.table.get(key.model)
        slot = entry.versions.get(key.version) if entry else None
        if entry is None or slot is None:
            return ModelLoading(key)  # NOTE: a reload removed it since; the caller resolves again
        if slot.model is not None:
            return None
        if on_request:
            backing_off = slot.state is VersionState.FAILED and time.monotonic() < slot.retry_at
            if not slot.on_demand or backing_off:
                return not_serving(key, slot)  # NOTE: unloaded by an operator, or failed
        elif slot.state is VersionState.LOADING:
            return ModelLoading(key)  # NOTE: start-up loads it
        if self._registry.closing:
            return ShuttingDown()
        loading = replace(slot, error=None, unloaded=False)
        self._registry.swap(with_slot(self._registry.table, key, loading))
        try:
            model = await self._loader.load(entry.spec, slot.spec)
        except (MemoryBudgetExceeded, ShuttingDown) as exc:
            self._registry.put(key, loading, slot)  # NOTE: not the version's fault: no back-off
            return exc
        except RegistryError as exc:
            failures = slot.failures + 1
            wait = backoff_s(failures)
            log.error("failed to load %s: %s (on demand again in %.0f s)", key, exc.message, wait)
            failed = replace(
                loading, error=exc.message, failures=failures, retry_at=time.monotonic() + wait
            )
            self._registry.put(key, loading, failed)
            return not_serving(key, failed) if on_request else exc
        ready = replace(loading, model=model, fingerprint=loaded_fingerprint(model), failures=0)
        if not self._registry.put(key, loading, ready):
            return ModelLoading(key)
        log.info(
            "loaded %s on %s in %.0f ms (warm-up %.0f ms, %d bytes)",
            key,
            "request" if on_request else "the management API",
            model.load_ms,
            model.warmup_ms,
            model.memory_bytes,
        )
        return None
