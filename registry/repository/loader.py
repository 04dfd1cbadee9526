"""``Loader``: loads versions on a bounded pool of threads, within the memory budget.

Every load, whoever asks (start-up, a reload, a request for a lazy version, the management
API), comes through here: it waits for one of ``REGISTRY_LOAD_WORKERS`` loader threads,
is charged against the budget of its device before it reads a byte (evicting idle versions,
least recently used first, until it fits), and is counted and timed for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from registry.budget import device_key
from registry.core import ModelRegistry
from registry.errors import MemoryBudgetExceeded, ModelLoadFailed, RegistryError, ShuttingDown
from registry.keys import VersionKey
from registry.loaders import load_version, resolve_device
from registry.manifest import ModelSpec, VersionSpec
from registry.model import LoadedModel
from registry.repository.report import LoadTally
from registry.settings import Settings
from registry.threads import use_threads
from registry.weightfiles import WeightDigests, resolve_weights, tensor_bytes

T = TypeVar("T")
log = logging.getLogger(__name__)


class Abandoned(Exception):
    """A load no longer wanted by the time a loader thread was free (``Loader.load``)."""


def _always() -> bool:
    return True


class Loader:
    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self._settings = settings
        self._registry = registry
        self.digests = WeightDigests()
        # NOTE: one torch thread each, so that they hold no OpenMP workers that would
        # slow every pass served (``registry.threads``)
        self._executor = ThreadPoolExecutor(
            max_workers=settings.loaders,
            thread_name_prefix="registry-load",
            initializer=use_threads,
            initargs=(1,),
        )
        # NOTE: loads wait here, not in the executor's queue, so each can still see a
        # close that happened while it waited, and not start.
        self._workers = asyncio.Semaphore(settings.loaders)
        self._room = asyncio.Lock()  # NOTE: one decision at a time on what to evict
        self._sizes: dict[tuple[VersionKey, int], int] = {}
        """(version, weight file size) -> bytes it held when last loaded: the estimate."""
        self.tally = LoadTally()
        """Every load so far, its outcome and how long it took, for metrics."""
        self._closing = False

    async def on_thread(self, function: Callable[..., T], *args: object) -> T:
        """Run blocking work (hashing, deserialising, warm-up) on a loader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def unless_stopped(self, function: Callable[..., T], *args: object) -> T:
        """``on_thread``, but ``ShuttingDown`` if ``stop_starting`` came while the work
        waited for a thread: at shutdown, queued work never starts."""
        return await self.on_thread(self._refused_once_stopped, function, *args)

    def _refused_once_stopped(self, function: Callable[..., T], *args: object) -> T:
        if self._closing:
            raise ShuttingDown()
        return function(*args)

    def stop_starting(self) -> None:
        """Start no more loads, nor work sent by ``unless_stopped``; what runs finishes."""
        self._closing = True

    async def load(
        self, model: ModelSpec, version: VersionSpec, wanted: Callable[[], bool] = _always
    ) -> LoadedModel:
        """One version, read and warmed up on a loader thread and charged to the budget.

        Raises what loading raises, ``MemoryBudgetExceeded`` when it cannot fit now,
        ``ShuttingDown`` once the loader closes, and ``Abandoned`` when ``wanted()`` says
        no once a loader thread is free (a reload after its first failure).
        """
        key = VersionKey(model.name, version.version)
        async with self._workers:
            if self._closing:
                raise ShuttingDown()
            if not wanted():
                raise Abandoned()
            started = time.perf_counter()
            outcome = "failed"
            try:
                found = await self._charged_load(key, model, version)
                outcome = "loaded"
                return found
            except MemoryBudgetExceeded:
                outcome = "refused"
                raise
            except RegistryError:
                raise
            except Exception as exc:
                # NOTE: every caller settles a version's state on a RegistryError; anything
                # else (a loader thread refused at shutdown, a device that cannot be asked)
                # would leave it loading for good
                if self._closing:
                    raise ShuttingDown() from exc
                log.exception("loading %s failed unexpectedly", key)
                raise ModelLoadFailed(f"{type(exc).__name__}: {exc}", key, "loading") from exc
            finally:
                self.tally.add(key.model, outcome, time.perf_counter() - started)

    async def _charged_load(
        self, key: VersionKey, model: ModelSpec, version: VersionSpec
    ) -> LoadedModel:
        budget = self._registry.budget
        try:
            device = device_key(resolve_device(model.device))
        except RegistryError as exc:
            exc.details.update(model=key.model, version=key.version)
            raise
        # NOTE: it opens the weight file: never on the event loop
        size_key, estimate = await self.on_thread(self._estimate, key, version)
        if budget.limit is not None and estimate > budget.limit:
            if size_key in self._sizes:
                raise _over_budget(key, device, estimate, budget.limit)
            # NOTE: a file's size beyond the whole budget is no measure (an archive holds
            # more than tensors): evict nothing on its word; the load settles what it holds.
            estimate = min(estimate, budget.free(device) or 0)
        await self._reserve(key, device, estimate)
        try:
            found = await self.on_thread(
                partial(
                    load_version,
                    model,
                    version,
                    self._settings.weights_root,
                    factories=self._settings.architecture_factories,
                    digests=self.digests,
                )
            )
        except BaseException:
            budget.refund(device, estimate)
            raise
        held = found.memory_bytes
        self._sizes[size_key] = held
        try:
            if budget.limit is not None and held > budget.limit:
                raise _over_budget(key, device, held, budget.limit)
            if held > estimate:
                await self._reserve(key, device, held - estimate)
        except BaseException:
            budget.refund(device, estimate)
            self._registry.discard(found)
            raise
        if held < estimate:
            budget.refund(device, estimate - held)
        found.charge = (device, held)
        found.last_used = time.monotonic()
        return found

    def _estimate(
        self, key: VersionKey, version: VersionSpec
    ) -> tuple[tuple[VersionKey, int], int]:
        """What a version will hold: what it held last time its file had this size, else
        the size of the tensors in its file (parameters are most of what a model holds)."""
        try:
            size = tensor_bytes(resolve_weights(self._settings.weights_root, version))
        except (RegistryError, OSError):
            size = 0  # NOTE: the load itself says what is wrong with the file
        return (key, size), self._sizes.get((key, size), size)

    async def _reserve(self, key: VersionKey, device: str, nbytes: int) -> None:
        """Charge ``nbytes`` on ``device``, evicting idle versions, least recently used
        first, until they fit."""
        budget = self._registry.budget
        async with self._room:
            while not budget.fits(device, nbytes):
                free = budget.free(device) or 0
                idlest = self._registry.idlest(device)
                if idlest is None:
                    raise MemoryBudgetExceeded(key, device, nbytes, free)
                await self._registry.evict(
                    idlest, f"{key} needs {nbytes} bytes on {device}, {free} are free"
                )
            budget.charge(device, nbytes)

    async def close(self) -> None:
        """Start no more loads; wait for those running (they cannot be interrupted)."""
        self.stop_starting()
        await asyncio.to_thread(self._executor.shutdown, wait=True)


def _over_budget(key: VersionKey, device: str, held: int, limit: int) -> ModelLoadFailed:
    return ModelLoadFailed(
        f"it holds {held} bytes on {device}, more than the whole memory budget ({limit} bytes)",
        key,
        "budgeting",
    )
