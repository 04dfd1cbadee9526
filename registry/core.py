"""``ModelRegistry``: the one object per application that holds live models.

Start-up builds a table with every version marked ``loading`` and returns at once, so HTTP
answers (``/healthz`` 200, ``/readyz`` 503) while versions load one by one on a loader
thread. Requests lease a version; the table itself is only ever replaced whole.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import torch

from registry.errors import (
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    RegistryError,
    ShuttingDown,
    VersionNotFound,
)
from registry.loaders import load_version
from registry.manifest import Manifest, ModelSpec, VersionSpec, load_manifest, version_sort_key
from registry.model import LoadedModel
from registry.settings import Settings

log = logging.getLogger(__name__)


class VersionState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)
class VersionSlot:
    """A version's place in the table: its spec, state and, once ready, its model."""

    spec: VersionSpec
    state: VersionState = VersionState.LOADING
    model: LoadedModel | None = None
    error: str | None = None


@dataclass(frozen=True, eq=False)
class ModelEntry:
    spec: ModelSpec
    versions: Mapping[str, VersionSlot]

    def sorted_versions(self) -> list[VersionSlot]:
        return sorted(self.versions.values(), key=lambda s: version_sort_key(s.spec.version))


@dataclass(frozen=True)
class LoadFailure:
    model: str
    version: str
    reason: str


class ModelRegistry:
    """Loads every version of a manifest, leases them to requests and releases them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._table: Mapping[str, ModelEntry] = {}
        self._loader: asyncio.Task[list[LoadFailure]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def table(self) -> Mapping[str, ModelEntry]:
        return self._table

    @property
    def loading_done(self) -> bool:
        return self._loader is not None and self._loader.done()

    @property
    def ready(self) -> bool:
        """Start-up loading has finished and the registry will serve what it loaded."""
        if self._closing or not self.loading_done:
            return False
        return not (self._settings.strict_startup and self.failures())

    def failures(self) -> list[LoadFailure]:
        return [
            LoadFailure(entry.spec.name, slot.spec.version, slot.error or "")
            for entry in self._table.values()
            for slot in entry.versions.values()
            if slot.state is VersionState.FAILED
        ]

    async def start(self) -> None:
        """Validate the manifest, then load every version in the background.

        An invalid manifest raises here, before anything is served.
        """
        manifest = await asyncio.to_thread(load_manifest, self._settings.manifest)
        torch.set_num_threads(self._settings.intra_op_threads)
        self._table = _table_for(manifest)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-load")
        self._loader = asyncio.get_running_loop().create_task(
            self._load_all(), name="registry-startup-load"
        )
        log.info(
            "loading %d versions of %d models from %s",
            sum(len(e.versions) for e in self._table.values()),
            len(self._table),
            self._settings.manifest,
        )

    async def wait_loaded(self) -> list[LoadFailure]:
        """Wait for start-up loading; returns the versions that failed."""
        if self._loader is None:
            raise RuntimeError("start() was not called")
        return await asyncio.shield(self._loader)

    async def _load_all(self) -> list[LoadFailure]:
        loop = asyncio.get_running_loop()
        root = self._settings.weights_root
        for entry in self._table.values():
            for slot in entry.sorted_versions():
                if self._closing:
                    return self.failures()
                try:
                    model = await loop.run_in_executor(
                        self._executor, load_version, entry.spec, slot.spec, root
                    )
                except RegistryError as exc:
                    slot.state, slot.error = VersionState.FAILED, exc.message
                    log.error("failed to load %s:%s: %s", entry.spec.name, slot.spec.version, exc)
                    continue
                model.start()
                slot.model, slot.state = model, VersionState.READY
                log.info(
                    "loaded %s in %.0f ms (warm-up %.0f ms, %d bytes)",
                    model.key,
                    model.load_ms,
                    model.warmup_ms,
                    model.memory_bytes,
                )
        failures = self.failures()
        log.info("start-up loading finished: %d failed", len(failures))
        return failures

    @contextmanager
    def lease(self, name: str, version: str | None = None) -> Iterator[LoadedModel]:
        """Hold a ready version for the length of a request.

        ``version`` is a version, an alias, or ``None`` for the default.
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

    async def close(self) -> None:
        """Stop loading, stop every batcher and drop every model reference."""
        self._closing = True
        if self._loader is not None:
            # NOTE: a load in progress on the thread cannot be interrupted; wait for it so
            # that no model is created after close() returns.
            await asyncio.gather(self._loader, return_exceptions=True)
        models = [
            slot.model
            for entry in self._table.values()
            for slot in entry.versions.values()
            if slot.model is not None
        ]
        for slot in (s for e in self._table.values() for s in e.versions.values()):
            slot.model = None
        self._table = {}
        await asyncio.gather(*(model.stop() for model in models))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._loader = None
        del models
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        log.info("registry closed: every model released")


def _table_for(manifest: Manifest) -> dict[str, ModelEntry]:
    return {
        spec.name: ModelEntry(spec, {v.version: VersionSlot(v) for v in spec.versions})
        for spec in manifest.models
    }
