"""``ModelRegistry``: the one object per application that holds live models.

Start-up builds a table with every version marked ``loading`` and returns at once, so HTTP
answers (``/healthz`` 200, ``/readyz`` 503) while versions load one by one on a loader
thread. Requests lease a version from the table; a reload loads what changed beside the
live table and then replaces the whole table in one assignment. A version that leaves the
table is released when its last lease ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch

from registry import diff, heap
from registry.diff import ReloadReport, fingerprint_manifest, loaded_fingerprint
from registry.errors import (
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    RegistryError,
    RemovesEveryModel,
    ShuttingDown,
    VersionNotFound,
)
from registry.keys import VersionKey
from registry.loaders import load_version
from registry.manifest import ModelSpec, VersionSpec, load_manifest
from registry.model import LoadedModel
from registry.reload import Fresh, load_plan, log_done, log_refused, refusal
from registry.settings import Settings
from registry.table import Table, VersionState, live_models, loading_table, slots, table_after
from registry.weightfiles import WeightDigests

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class LoadFailure:
    model: str
    version: str
    reason: str


class ModelRegistry:
    """Loads every version of a manifest, leases them to requests and releases them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._table: Table = {}
        self._digests = WeightDigests()
        self._reload_lock = asyncio.Lock()  # NOTE: start-up loading holds it too
        self._loader: asyncio.Task[list[LoadFailure]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._draining: set[LoadedModel] = set()
        self._pending: tuple[VersionKey, ...] = ()
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self.reload_outcomes: Counter[str] = Counter()
        """Reloads so far by outcome (applied, dry_run, or an error code), for metrics."""

    @property
    def table(self) -> Table:
        return self._table

    @property
    def draining(self) -> list[LoadedModel]:
        """Retired versions that still serve requests which leased them before the swap."""
        return sorted(self._draining, key=lambda m: m.key)

    @property
    def pending(self) -> tuple[VersionKey, ...]:
        """Versions a reload in progress is loading."""
        return self._pending

    @property
    def ready(self) -> bool:
        """Start-up loading has finished and the registry will serve what it loaded."""
        if self._closing or self._loader is None or not self._loader.done():
            return False
        return not (self._settings.strict_startup and self.failures())

    def failures(self) -> list[LoadFailure]:
        return [
            LoadFailure(key.model, key.version, slot.error or "")
            for key, slot in slots(self._table)
            if slot.state is VersionState.FAILED
        ]

    async def start(self) -> None:
        """Validate the manifest, then load every version in the background.

        An invalid manifest raises here, before anything is served.
        """
        manifest = await asyncio.to_thread(load_manifest, self._settings.manifest)
        torch.set_num_threads(self._settings.intra_op_threads)
        self._table = loading_table(manifest)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-load")
        self._loader = asyncio.get_running_loop().create_task(
            self._load_startup(), name="registry-startup-load"
        )
        log.info(
            "loading %d versions of %d models from %s",
            len(slots(self._table)),
            len(self._table),
            self._settings.manifest,
        )

    async def wait_loaded(self) -> list[LoadFailure]:
        """Wait for start-up loading; returns the versions that failed."""
        if self._loader is None:
            raise RuntimeError("start() was not called")
        return await asyncio.shield(self._loader)

    async def _load_startup(self) -> list[LoadFailure]:
        async with self._reload_lock:
            for key, slot in slots(self._table):
                if self._closing:
                    break
                try:
                    model = await self._load(self._table[key.model].spec, slot.spec)
                except RegistryError as exc:
                    slot.error = exc.message
                    log.error("failed to load %s: %s", key, exc.message)
                    continue
                model.start()
                slot.model, slot.fingerprint = model, loaded_fingerprint(model)
                log.info(
                    "loaded %s in %.0f ms (warm-up %.0f ms, %d bytes)",
                    key,
                    model.load_ms,
                    model.warmup_ms,
                    model.memory_bytes,
                )
        failures = self.failures()
        log.info("start-up loading finished: %d failed", len(failures))
        return failures

    async def _on_loader(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work (hashing, deserialising, warm-up) on the loader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _load(self, model: ModelSpec, version: VersionSpec) -> LoadedModel:
        return await self._on_loader(
            partial(
                load_version,
                model,
                version,
                self._settings.weights_root,
                factories=self._settings.architecture_factories,
                digests=self._digests,
            )
        )

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
            self.reload_outcomes[exc.code] += 1
            log_refused(actor, dry_run, exc)
            raise
        outcome = "dry_run" if dry_run else "applied"
        self.reload_outcomes[outcome] += 1
        log_done(actor, outcome, report)
        return report

    async def _reload(self, dry_run: bool, allow_remove_all: bool) -> ReloadReport:
        async with self._reload_lock:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            started = time.perf_counter()
            manifest = await asyncio.to_thread(load_manifest, self._settings.manifest)
            found, failed = await self._on_loader(
                fingerprint_manifest, manifest, self._settings.weights_root, self._digests
            )
            loaded = {
                key: slot.fingerprint if slot.model else None for key, slot in slots(self._table)
            }
            current = {name: entry.spec for name, entry in self._table.items()}
            plan = diff.plan(loaded, current, manifest, found)

            def report(applied: bool, loaded: Fresh | None = None) -> ReloadReport:
                elapsed = (time.perf_counter() - started) * 1000
                return ReloadReport.of(
                    plan,
                    applied=applied,
                    dry_run=dry_run,
                    failed=failed,
                    loaded=loaded,
                    duration_ms=elapsed,
                )

            if failed:
                raise refusal(report(False))
            if plan.removes_every_model and not allow_remove_all:
                raise RemovesEveryModel(
                    "reload refused, nothing changed: the manifest keeps none of the models "
                    f"served now ({', '.join(sorted(current))}); ask for it explicitly with "
                    "allow_remove_all=true",
                    report=report(False).model_dump(),
                )
            if dry_run:
                return report(False)
            self._pending = plan.to_load
            try:
                fresh = await load_plan(plan, self._load, failed)
            finally:
                self._pending = ()
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if failed:
                raise refusal(report(False, fresh))
            for model in fresh.values():
                model.start()
            self._swap(table_after(plan, self._table, fresh))
            return report(True, fresh)

    def _swap(self, table: Table) -> None:
        """Replace the table in one assignment, then retire what the new one dropped."""
        old, self._table = self._table, table
        kept = {id(model) for model in live_models(table)}
        for model in live_models(old):
            if id(model) not in kept:
                self._retire(model)

    def _retire(self, model: LoadedModel) -> None:
        model.retired = True
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
        self._spawn(self._release(model))

    async def _release(self, model: LoadedModel) -> None:
        await model.stop()
        log.info("released %s", model.key)
        if model.in_frozen_heap:
            del model  # NOTE: the last reference, before the pass that may free its cycles
            heap.collect_everything()

    async def settled(self) -> None:
        """Wait until every retired version with no lease left has been released."""
        await asyncio.gather(*self._background)

    def freeze_heap(self) -> None:
        """Take what is alive now out of the collector's sight (see ``registry.heap``)."""
        heap.freeze(live_models(self._table))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @contextmanager
    def lease(self, name: str, version: str | None = None) -> Iterator[LoadedModel]:
        """Hold a ready version for the length of a request.

        ``version`` is a version, an alias, or ``None`` for the default. The lease keeps a
        version that a reload retires alive until the request is done with it.
        """
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        entry = self._table.get(name)
        if entry is None:
            raise ModelNotFound(f"no model {name!r}", available=sorted(self._table))
        concrete = entry.spec.resolve(version)
        if concrete is None:
            raise VersionNotFound(
                f"model {name!r} has no version or alias {version!r}",
                model=name,
                available=[s.spec.version for s in entry.sorted_versions()],
                aliases=dict(entry.spec.aliases),
            )
        slot = entry.versions[concrete]
        model = slot.model
        if model is None:
            if slot.state is VersionState.FAILED:
                raise ModelUnavailable(
                    f"{name}:{concrete} failed to load",
                    model=name,
                    version=concrete,
                    reason=slot.error,
                )
            raise ModelLoading(f"{name}:{concrete} is still loading", model=name, version=concrete)
        model.leases += 1
        try:
            yield model
        finally:
            model.leases -= 1
            if model.retired:
                self._release_when_idle(model)

    async def close(self) -> None:
        """Stop loading, stop every batcher and drop every model reference."""
        self._closing = True
        # NOTE: a load in progress cannot be interrupted; wait for it (start-up and reload
        # both hold the lock) so that no model is created after close() returns.
        async with self._reload_lock:
            models = live_models(self._table) + list(self._draining)
            for _, slot in slots(self._table):
                slot.model = None  # NOTE: a stray reference to a slot must not pin a model
            self._table, self._draining = {}, set()
            await asyncio.gather(*(model.stop() for model in models), *self._background)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._loader = None
        del models
        heap.collect_everything()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        log.info("registry closed: every model released")
