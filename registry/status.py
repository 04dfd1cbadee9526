"""``RegistryStatus``: one frozen picture of everything the registry holds.

``/readyz``, ``/models``, ``/metrics``, the V2 readiness routes and the poller all read
this instead of walking the live table each in its own way, so they agree with each
other and none of them can change what it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from registry.buckets import Held
from registry.budget import MemoryBudget
from registry.errors import (
    ModelLoading,
    ModelUnavailable,
    ModelUnloaded,
    NotReady,
    RegistryError,
)
from registry.keys import VersionKey
from registry.manifest import ModelSpec, VersionSpec
from registry.model import LoadedModel
from registry.table import Table, VersionSlot, VersionState, resolve


@dataclass(frozen=True, slots=True)
class VersionStatus:
    key: VersionKey
    spec: VersionSpec
    state: VersionState
    reason: str | None
    """Why it failed to load, for ``failed``."""
    aliases: tuple[str, ...]
    """Aliases naming it, ``default`` first when it is the model's default."""
    leases: int
    queue_depth: int
    load_ms: float | None
    warmup_ms: float | None
    memory_bytes: int | None
    fingerprint: str | None
    lazy: bool = False
    resident: bool = False
    on_demand: bool = False
    """A request would load it if it is not in memory."""
    last_eviction: str | None = None
    pass_rows: Held | None = None
    """The rows of each served forward pass; ``None`` for a version not in memory."""
    pass_seconds: Held | None = None
    """How long each served pass took."""
    queue_seconds: Held | None = None
    """How long each request waited before its pass began."""


@dataclass(frozen=True, slots=True)
class ModelStatus:
    spec: ModelSpec
    versions: tuple[VersionStatus, ...]
    """The versions the manifest names, in version order (draining ones are not here)."""

    @property
    def state(self) -> VersionState:
        """``failed`` if any version failed, else ``loading`` if any loads, else ``ready``
        if any is, else ``evicting`` or ``unloaded``."""
        states = {v.state for v in self.versions}
        for worst in (
            VersionState.FAILED,
            VersionState.LOADING,
            VersionState.READY,
            VersionState.EVICTING,
        ):
            if worst in states:
                return worst
        return VersionState.UNLOADED


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    charged: int
    """Bytes charged: what loaded versions hold, and what loads under way expect to."""
    budget: int | None


@dataclass(frozen=True, slots=True)
class RegistryStatus:
    ready: bool
    """Start-up loading finished and the registry serves what it loaded."""
    models: Mapping[str, ModelStatus]
    loading: tuple[VersionKey, ...]
    """Versions a reload in progress is loading beside the live ones."""
    draining: tuple[VersionStatus, ...]
    """Retired versions still answering requests that leased them before a reload."""
    memory: Mapping[str, DeviceMemory] = field(default_factory=dict)
    """Per device, what is charged against the memory budget."""

    def versions(self) -> Iterator[VersionStatus]:
        """Every version the manifest names, model by model."""
        for model in self.models.values():
            yield from model.versions

    def in_state(self, state: VersionState) -> list[VersionKey]:
        return [v.key for v in self.versions() if v.state is state]

    def not_ready(self) -> NotReady:
        """The 503 that says what start-up is still loading and what failed."""
        loading, failed = self.in_state(VersionState.LOADING), self.in_state(VersionState.FAILED)
        return NotReady(pending=[str(k) for k in loading], failed=[str(k) for k in failed])

    def serving(self, name: str, version: str | None = None) -> VersionStatus:
        """The version a request for ``name`` (and ``version``) would get, if it is ready.

        Raises what a lease would: not found, still loading, or failed to load.
        """
        model, concrete = resolve(self.models, name, version)
        found = next(v for v in model.versions if v.spec.version == concrete)
        if found.state is not VersionState.READY:
            raise _not_ready(found)
        return found


def _not_ready(version: VersionStatus) -> RegistryError:
    if version.state is VersionState.FAILED:
        return ModelUnavailable(version.key, version.reason)
    if version.state is VersionState.LOADING:
        return ModelLoading(version.key)
    return ModelUnloaded(version.key, on_demand=version.on_demand)


def snapshot(
    table: Table,
    draining: Iterable[LoadedModel],
    loading: tuple[VersionKey, ...],
    ready: bool,
    budget: MemoryBudget,
) -> RegistryStatus:
    # NOTE: an evicted version gives its memory back after it leaves the table: it shows
    # as ``evicting`` in its own place, not among the versions a reload retired.
    evicting = {model.key for model in draining if model.evicted}
    models = {
        name: ModelStatus(
            entry.spec,
            tuple(
                _version_status(entry.spec, slot, _state(slot, evicting, name))
                for slot in entry.sorted_versions()
            ),
        )
        for name, entry in table.items()
    }
    retired = tuple(
        _version_status(model.spec, VersionSlot(model.version_spec, model), VersionState.DRAINING)
        for model in sorted(draining, key=lambda m: m.key)
        if not model.evicted
    )
    charged = budget.charged()
    memory = {device: DeviceMemory(charged[device], budget.limit) for device in sorted(charged)}
    return RegistryStatus(
        ready=ready, models=models, loading=loading, draining=retired, memory=memory
    )


def _state(slot: VersionSlot, evicting: set[VersionKey], name: str) -> VersionState:
    state = slot.state
    if state is VersionState.UNLOADED and VersionKey(name, slot.spec.version) in evicting:
        return VersionState.EVICTING
    return state


def _version_status(spec: ModelSpec, slot: VersionSlot, state: VersionState) -> VersionStatus:
    version = slot.spec.version
    aliases = sorted(alias for alias, target in spec.aliases.items() if target == version)
    if spec.resolved_default == version:
        aliases.insert(0, "default")
    model = slot.model
    return VersionStatus(
        key=VersionKey(spec.name, version),
        spec=slot.spec,
        state=state,
        reason=slot.error,
        aliases=tuple(aliases),
        leases=model.leases if model else 0,
        queue_depth=model.queue_depth if model else 0,
        load_ms=model.load_ms if model else None,
        warmup_ms=model.warmup_ms if model else None,
        memory_bytes=model.memory_bytes if model else None,
        fingerprint=slot.fingerprint,
        lazy=spec.lazy(slot.spec),
        resident=spec.pinned(slot.spec),
        on_demand=slot.on_demand,
        last_eviction=slot.last_eviction,
        pass_rows=model.passes.frozen() if model else None,
        pass_seconds=model.pass_seconds.frozen() if model else None,
        queue_seconds=model.queue_seconds.frozen() if model else None,
    )
