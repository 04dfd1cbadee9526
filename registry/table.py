"""The table of live models: what a request resolves against, replaced whole on reload."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from registry.diff import Plan, loaded_fingerprint
from registry.keys import VersionKey
from registry.manifest import Manifest, ModelSpec, VersionSpec, version_sort_key
from registry.model import LoadedModel


class VersionState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass(eq=False)
class VersionSlot:
    """A version's place in the table: its spec and, once loaded, its model or its error.

    A slot is only mutated while its table is being built at start-up and when the registry
    closes; a reload builds new slots for what it loads and carries unchanged slots over.
    """

    spec: VersionSpec
    model: LoadedModel | None = None
    fingerprint: str | None = None
    error: str | None = None

    @property
    def state(self) -> VersionState:
        if self.model is not None:
            return VersionState.READY
        return VersionState.LOADING if self.error is None else VersionState.FAILED


@dataclass(frozen=True, eq=False)
class ModelEntry:
    spec: ModelSpec
    versions: Mapping[str, VersionSlot]

    def sorted_versions(self) -> list[VersionSlot]:
        return sorted(self.versions.values(), key=lambda s: version_sort_key(s.spec.version))


Table = Mapping[str, ModelEntry]


def loading_table(manifest: Manifest) -> dict[str, ModelEntry]:
    """Every version of ``manifest`` in state ``loading``: the table start-up begins with."""
    return {
        spec.name: ModelEntry(spec, {v.version: VersionSlot(v) for v in spec.versions})
        for spec in manifest.models
    }


def slots(table: Table) -> list[tuple[VersionKey, VersionSlot]]:
    return [
        (VersionKey(entry.spec.name, slot.spec.version), slot)
        for entry in table.values()
        for slot in entry.sorted_versions()
    ]


def live_models(table: Table) -> list[LoadedModel]:
    return [slot.model for _, slot in slots(table) if slot.model is not None]


def table_after(plan: Plan, current: Table, fresh: Mapping[VersionKey, LoadedModel]) -> Table:
    """The table for the plan's manifest: ``fresh`` versions in new slots, the rest carried."""
    table = {}
    for spec in plan.manifest.models:
        versions = {}
        for version in spec.versions:
            key = VersionKey(spec.name, version.version)
            if key in fresh:
                model = fresh[key]
                versions[version.version] = VersionSlot(version, model, loaded_fingerprint(model))
            else:
                versions[version.version] = current[spec.name].versions[version.version]
        table[spec.name] = ModelEntry(spec, versions)
    return table
