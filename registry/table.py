"""The table of live models: what a request resolves against, replaced whole on change.

Slots are frozen: start-up progress, a reload and close each build a new table and hand
it to ``ModelRegistry.swap``, so a reader that took the table once sees one consistent
state for as long as it holds it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Protocol, TypeVar

from registry.errors import (
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    ModelUnloaded,
    NotLoaded,
    RegistryError,
    VersionNotFound,
)
from registry.keys import VersionKey
from registry.manifest import Manifest, ModelSpec, VersionSpec, version_sort_key
from registry.model import LoadedModel


class VersionState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    EVICTING = "evicting"
    """Unloaded (evicted, or by an operator), its memory not yet given back."""
    DRAINING = "draining"


@dataclass(frozen=True, eq=False, slots=True)
class VersionSlot:
    """A version's place in the table: its spec and, once loaded, its model or its error.

    A slot without a model is loading, failed (``error``) or ``unloaded``: out of memory
    on purpose (lazy and not asked for yet, evicted to make room, or unloaded by an
    operator), with the ``fingerprint`` of what it would load, so that a reload can tell
    it unchanged and leave it unloaded.
    """

    spec: VersionSpec
    model: LoadedModel | None = None
    fingerprint: str | None = None
    error: str | None = None
    unloaded: bool = False
    on_demand: bool = False
    """A request may load it: it is lazy, or was evicted to make room."""
    failures: int = 0
    """Loads on demand that failed in a row; each doubles the back-off."""
    retry_at: float = 0.0
    """``time.monotonic()`` before which a failed version is not loaded on demand again."""
    last_eviction: str | None = None
    """Why it was last taken out of memory (``EvictionReason``), kept across loads."""

    @property
    def state(self) -> VersionState:
        if self.model is not None:
            return VersionState.READY
        if self.error is not None:
            return VersionState.FAILED
        return VersionState.UNLOADED if self.unloaded else VersionState.LOADING


CARRIED = ("spec", "on_demand")
"""What a reload changes in a slot without a load: its version's ``load`` and ``resident``
(``planning``'s ``_carried``)."""


def same_place(current: VersionSlot, expected: VersionSlot) -> bool:
    """Whether ``current`` is ``expected``, or ``expected`` as a reload carried it (equal
    in all but ``CARRIED``): either way, work begun on ``expected`` still belongs there."""
    return current is expected or all(
        getattr(current, f.name) == getattr(expected, f.name)
        for f in fields(VersionSlot)
        if f.name not in CARRIED
    )


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


def not_serving(key: VersionKey, slot: VersionSlot) -> RegistryError:
    """Why a version in the table cannot answer now.

    ``NotLoaded`` where a request may load it (the model dependency then does), else why
    not: still loading at start-up, failed (and for how long a retry waits), or unloaded.
    """
    state = slot.state
    if state is VersionState.FAILED:
        wait = slot.retry_at - time.monotonic()
        if slot.on_demand and wait <= 0:
            return NotLoaded(key)
        return ModelUnavailable(key, slot.error, max(1, math.ceil(wait)) if slot.on_demand else 30)
    if slot.on_demand:
        return NotLoaded(key)
    if state is VersionState.UNLOADED:
        return ModelUnloaded(key)
    return ModelLoading(key)
