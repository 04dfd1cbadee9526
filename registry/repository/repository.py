"""``ModelRepository``: finds the models a manifest names and applies them to the registry.

It reads and validates the manifest, fingerprints weight files, plans what changed, loads
versions through its ``Loader`` (``REGISTRY_LOAD_WORKERS`` at once, within the memory
budget: start-up loading, then each reload; ``OnDemand`` for lazy versions and the
management API) and hands every resulting table to ``ModelRegistry.swap``. The registry
never reads a file; this never holds a lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial

from registry.core import ModelRegistry
from registry.errors import RegistryError, ReloadFailed, RemovesEveryModel, ShuttingDown
from registry.keys import VersionKey
from registry.manifest import Manifest, load_manifest
from registry.model import LoadedModel
from registry.repository import planning
from registry.repository.demand import OnDemand
from registry.repository.loader import Abandoned, Loader
from registry.repository.planning import (
    Plan,
    content_sha256,
    fingerprint_manifest,
    fingerprint_version,
    loaded_fingerprint,
    unloaded_slot,
)
from registry.repository.report import LoadTally, ReloadReport, log_done, log_refused
from registry.settings import Settings
from registry.table import VersionSlot, VersionState, loading_table, slots
from registry.tasks import Background

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadFailure:
    model: str
    version: str
    reason: str


@dataclass(frozen=True)
class Loaded:
    """What loading a plan produced: the versions loaded, or the first that failed."""

    fresh: dict[VersionKey, LoadedModel]
    failed: dict[VersionKey, str]


class ModelRepository:
    """Reads the manifest, loads what it names and swaps the result into the registry."""

    def __init__(self, settings: Settings, registry: ModelRegistry, background: Background):
        self._settings = settings
        self._registry = registry
        self._background = background
        self._lock = asyncio.Lock()  # NOTE: start-up loading and every reload hold it
        self._loader = Loader(settings, registry)
        self.on_demand = OnDemand(registry, self._loader, background, settings.load_wait_s)
        """Loads for requests (lazy or evicted versions) and the management API."""
        self._startup: asyncio.Task[list[LoadFailure]] | None = None
        self._closing = False
        self.manifest_sha256: str | None = None
        """``content_sha256`` of the manifest served: set at start, then by each
        reload applied, so replicas can be seen to converge on one manifest."""
        self.reload_outcomes: Counter[str] = Counter()
        """Reloads so far by outcome (applied, dry_run, or an error code), for metrics."""
        self._reload_ended = asyncio.Condition()

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    @property
    def loads(self) -> LoadTally:
        """Every load so far, its outcome and how long it took, for metrics."""
        return self._loader.tally

    async def start(self) -> None:
        """Validate the manifest, then load every version in the background.

        An invalid manifest raises here, before anything is served. Until a version is
        loaded the registry answers for it with ``model_loading``.
        """
        manifest = await asyncio.to_thread(load_manifest, self._settings.manifest)
        self._registry.swap(loading_table(manifest))
        self.manifest_sha256 = content_sha256(manifest)
        self._startup = self._background.spawn(
            self._load_startup(manifest), name="start-up loading"
        )
        versions = sum(len(model.versions) for model in manifest.models)
        log.info(
            "loading %d versions of %d models from %s",
            versions,
            len(manifest.models),
            self._settings.manifest,
        )

    async def wait_loaded(self) -> list[LoadFailure]:
        """Wait for start-up loading; returns the versions that failed."""
        if self._startup is None:
            raise RuntimeError("start() was not called")
        return await asyncio.shield(self._startup)

    async def _load_startup(self, manifest: Manifest) -> list[LoadFailure]:
        """Every eager version, ``REGISTRY_LOAD_WORKERS`` at a time, each swapped in and
        served as soon as it is loaded; every lazy one fingerprinted and left unloaded."""

        async def load(key: VersionKey, slot: VersionSlot) -> None:
            spec, _ = planning.specs(manifest, key)
            try:
                if spec.lazy(slot.spec):
                    done = await self._fingerprinted(key, slot, manifest)
                else:
                    done = await self._loaded_slot(key, slot, manifest)
            except ShuttingDown:
                return  # NOTE: shutdown began before a loader thread was free for it
            if self._closing and done.model is not None:
                self._registry.discard(done.model)
            elif not self._closing:
                self._registry.put(key, slot, done)  # NOTE: unless an operator unloaded it

        async with self._lock:
            await asyncio.gather(*(load(key, slot) for key, slot in slots(self._registry.table)))
        failures = [
            LoadFailure(key.model, key.version, slot.error or "")
            for key, slot in slots(self._registry.table)
            if slot.state is VersionState.FAILED
        ]
        log.info("start-up loading finished: %d failed", len(failures))
        if not (self._settings.strict_startup and failures) and not self._closing:
            self._registry.mark_ready()
        return failures

    async def _fingerprinted(
        self, key: VersionKey, slot: VersionSlot, manifest: Manifest
    ) -> VersionSlot:
        """A lazy version, unloaded, once its weight file is found and hashed."""
        model, version = planning.specs(manifest, key)
        try:
            found = await self._loader.unless_stopped(
                partial(
                    fingerprint_version,
                    model,
                    version,
                    self._settings.weights_root,
                    self._loader.digests,
                )
            )
        except ShuttingDown:
            raise
        except RegistryError as exc:
            log.error("cannot load %s when asked: %s", key, exc.message)
            return VersionSlot(slot.spec, error=exc.message, on_demand=True)
        return unloaded_slot(slot.spec, found)

    async def _loaded_slot(
        self, key: VersionKey, slot: VersionSlot, manifest: Manifest
    ) -> VersionSlot:
        """The slot once its version is loaded, or carrying why it failed."""
        try:
            model = await self._loader.load(*planning.specs(manifest, key))
        except ShuttingDown:
            raise
        except RegistryError as exc:
            log.error("failed to load %s: %s", key, exc.message)
            return VersionSlot(slot.spec, error=exc.message)
        log.info(
            "loaded %s in %.0f ms (warm-up %.0f ms, %d bytes)",
            key,
            model.load_ms,
            model.warmup_ms,
            model.memory_bytes,
        )
        return VersionSlot(slot.spec, model, loaded_fingerprint(model))

    async def reload(
        self, *, actor: str, dry_run: bool = False, allow_remove_all: bool = False
    ) -> ReloadReport:
        """Apply the manifest as it is on disk now: all of it, or nothing.

        Raises ``ManifestError`` or ``ReloadFailed`` (carrying the report) and changes
        nothing when the manifest is invalid or any new version fails to load, and
        ``RemovesEveryModel`` when no model served now would be kept, unless
        ``allow_remove_all``. Every outcome is logged as one line saying who asked
        (``actor``) and what changed.
        """
        try:
            report = await self._reload(dry_run, allow_remove_all)
        except RegistryError as exc:
            log_refused(actor, dry_run, exc)
            await self._count(exc.code)
            raise
        outcome = "dry_run" if dry_run else "applied"
        log_done(actor, outcome, report)
        await self._count(outcome)
        return report

    async def _count(self, outcome: str) -> None:
        async with self._reload_ended:
            self.reload_outcomes[outcome] += 1
            self._reload_ended.notify_all()

    async def wait_reloads(self, count: int) -> None:
        """Wait until ``count`` reloads have ended, applied or refused, whoever started them.

        For callers that start no reload themselves but must see one end (the poller's).
        """
        async with self._reload_ended:
            await self._reload_ended.wait_for(lambda: self.reload_outcomes.total() >= count)

    async def _reload(self, dry_run: bool, allow_remove_all: bool) -> ReloadReport:
        async with self._lock:
            self._refuse_when_closing()
            started = time.perf_counter()
            plan, unreadable = await self._plan()

            def report(loaded: Loaded | None = None, *, applied: bool = False) -> ReloadReport:
                return ReloadReport.of(
                    plan,
                    applied=applied,
                    dry_run=dry_run,
                    failed=unreadable | (loaded.failed if loaded else {}),
                    loaded=loaded.fresh if loaded else None,
                    duration_ms=(time.perf_counter() - started) * 1000,
                )

            if unreadable:
                raise ReloadFailed(report().model_dump())
            if plan.removes_every_model and not allow_remove_all:
                raise RemovesEveryModel(list(self._registry.table), report().model_dump())
            if dry_run:
                return report()
            with self._registry.loading(plan.to_load):
                loaded = await self._load_plan(plan)
            if loaded.failed or self._closing:
                for model in loaded.fresh.values():
                    self._registry.discard(model)  # NOTE: never started nor served
                self._refuse_when_closing()
                raise ReloadFailed(report(loaded).model_dump())
            for model in loaded.fresh.values():
                model.start(self._registry.wide)
            self._registry.swap(planning.table_after(plan, self._registry.table, loaded.fresh))
            self.manifest_sha256 = content_sha256(plan.manifest)
            return report(loaded, applied=True)

    async def _plan(self) -> tuple[Plan, dict[VersionKey, str]]:
        """The plan for the manifest on disk, and the versions whose files cannot be read."""
        manifest = await asyncio.to_thread(load_manifest, self._settings.manifest)
        found, unreadable = await self._loader.on_thread(
            fingerprint_manifest, manifest, self._settings.weights_root, self._loader.digests
        )
        table = self._registry.table
        loaded = {key: slot.fingerprint for key, slot in slots(table)}
        in_memory = {key for key, slot in slots(table) if slot.model is not None}
        current = {name: entry.spec for name, entry in table.items()}
        return planning.plan(loaded, current, manifest, found, in_memory), unreadable

    async def _load_plan(self, plan: Plan) -> Loaded:
        """Load the plan's new and changed versions, ``REGISTRY_LOAD_WORKERS`` at a time;
        after the first failure nothing more is started.

        Nothing loaded here is started or served until the caller swaps it in.
        """
        fresh: dict[VersionKey, LoadedModel] = {}
        failed: dict[VersionKey, str] = {}

        def wanted() -> bool:
            return not (failed or self._closing)

        async def load(key: VersionKey) -> None:
            try:
                fresh[key] = await self._loader.load(*planning.specs(plan.manifest, key), wanted)
            except Abandoned:
                pass
            except RegistryError as exc:
                failed.setdefault(key, exc.message)

        await asyncio.gather(*(load(key) for key in plan.to_load))
        in_plan_order = {key: fresh[key] for key in plan.to_load if key in fresh}
        return Loaded(in_plan_order, failed)

    def _refuse_when_closing(self) -> None:
        if self._closing:
            raise ShuttingDown()

    async def close(self) -> None:
        """Stop loading: wait for a load in progress (it cannot be interrupted), then end
        the loader thread, so that no model is created after this returns."""
        self._closing = True
        self._loader.stop_starting()  # NOTE: what waits for a loader thread never starts
        async with self._lock:
            pass
        await self._loader.close()
