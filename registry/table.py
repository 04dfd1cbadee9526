"""The table of live models: what a request resolves against, replaced whole on change.

Slots are frozen: start-up progress, a reload and close each build a new table and hand
it to ``ModelRegistry.swap``, so a reader that took the table once sees one consistent
state for as long as it holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol, TypeVar

from registry.errors import (
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    RegistryError,
    VersionNotFound,
)
from registry.keys import VersionKey
from registry.manifest import Manifest, ModelSpec, VersionSpec, version_sort_key
from registry.model import LoadedModel


class VersionState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass(frozen=True, eq=False, slots=True)
class VersionSlot:
    """A version's place in the table: its spec and, once loaded, its model or its error."""

    spec: VersionSpec
    model: LoadedModel | None = None
    fingerprint: str | None = None
    error: str | None = None

    @property
    def state(self) -> VersionState:
        if self.model is not None:
            return VersionState.READY
        return VersionState.LOADING if self.error is None else VersionState.FAILED


@dataclass(frozen=True, eq=False, slots=True)
class ModelEntry:
    spec: ModelSpec
    versions: Mapping[str, VersionSlot]

    def sorted_versions(self) -> list[VersionSlot]:
        return sorted(self.versions.values(), key=lambda s: version_sort_key(s.spec.version))


Table = Mapping[str, ModelEntry]


def loading_table(manifest: Manifest) -> Table:
    """Every version of ``manifest`` in state ``loading``: the table start-up begins with."""
    return {
        spec.name: ModelEntry(spec, {v.version: VersionSlot(v) for v in spec.versions})
        for spec in manifest.models
    }


def with_slot(table: Table, key: VersionKey, slot: VersionSlot) -> Table:
    """``table`` with one version's slot replaced (start-up marking progress)."""
    entry = table[key.model]
    versions = {**entry.versions, key.version: slot}
    return {**table, key.model: replace(entry, versions=versions)}


def slots(table: Table) -> list[tuple[VersionKey, VersionSlot]]:
    return [
        (VersionKey(entry.spec.name, slot.spec.version), slot)
        for entry in table.values()
        for slot in entry.sorted_versions()
    ]


def live_models(table: Table) -> list[LoadedModel]:
    """Every loaded model, in no particular order.

    NOTE: not through ``slots``: a swap calls this on both tables, once per version at
    start-up, and needs neither the keys nor their order.
    """
    return [
        slot.model
        for entry in table.values()
        for slot in entry.versions.values()
        if slot.model is not None
    ]


class _Named(Protocol):
    @property
    def spec(self) -> ModelSpec: ...


Named = TypeVar("Named", bound=_Named)


def resolve(models: Mapping[str, Named], name: str, version: str | None) -> tuple[Named, str]:
    """The model and the concrete version that ``version`` (or the default) names.

    One rule for the live table (leases) and the status snapshot (readiness routes).
    """
    model = models.get(name)
    if model is None:
        raise ModelNotFound(name, available=sorted(models))
    spec = model.spec
    concrete = spec.resolve(version)
    if concrete is None:
        available = sorted((v.version for v in spec.versions), key=version_sort_key)
        raise VersionNotFound(name, version, available, spec.aliases)
    return model, concrete


def not_serving(key: VersionKey, state: VersionState, reason: str | None) -> RegistryError:
    """Why a version in the table cannot answer yet: failed to load, or still loading."""
    if state is VersionState.FAILED:
        return ModelUnavailable(key, reason)
    return ModelLoading(key)
