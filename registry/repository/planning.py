"""Planning: what a manifest changes against what is loaded, and the table that results.

A version is identified by ``(model, version)`` and compared by a fingerprint of
everything that shapes the loaded object: its own spec, the model-level fields that loading
and warm-up read (input, output, batching, device, warm-up), and the weight file's
content digest (hashed once per file change, see ``WeightDigests``). ``plan`` itself is a
pure function. Equal fingerprints mean the loaded object can be kept as it is; aliases,
the default version and the description never need a load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Set
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson
from pydantic import BaseModel, ConfigDict

from registry.errors import RegistryError
from registry.keys import VersionKey
from registry.manifest import Manifest, ModelSpec, VersionSpec
from registry.model import LoadedModel
from registry.table import ModelEntry, Table, VersionSlot
from registry.weightfiles import WeightDigests, resolve_weights


def content_sha256(manifest: Manifest) -> str:
    """sha256 of what a manifest says, not how it is written: replicas that serve the same
    models show the same fingerprint, whatever the comments and layout of their files."""
    document = manifest.model_dump(mode="json")
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def fingerprint_manifest(
    manifest: Manifest, weights_root: Path, digests: WeightDigests
) -> tuple[dict[VersionKey, str], dict[VersionKey, str]]:
    """Fingerprints of every version, and the reason for each that has none (no file...).

    Reads and hashes weight files (through the digest cache): run it off the event loop.
    """
    found, failed = {}, {}
    for model in manifest.models:
        for version in model.versions:
            key = VersionKey(model.name, version.version)
            try:
                found[key] = fingerprint_version(model, version, weights_root, digests)
            except RegistryError as exc:
                failed[key] = exc.message
    return found, failed


def fingerprint_version(
    model: ModelSpec, version: VersionSpec, weights_root: Path, digests: WeightDigests
) -> str:
    """One version's fingerprint; raises ``WeightsError`` when its file cannot be read."""
    path = resolve_weights(weights_root, version)
    return fingerprint(model, version, digests.digest(path, str(version.path)))


def loaded_fingerprint(model: LoadedModel) -> str:
    """The fingerprint of what a version was actually loaded from.

    NOTE: a file may change between planning and loading; the loaded bytes' own digest
    makes the next reload see that change instead of trusting the planned one.
    """
    return fingerprint(model.spec, model.version_spec, model.weights_sha256)


def fingerprint(model: ModelSpec, version: VersionSpec, weights_digest: str) -> str:
    # NOTE: the handler and its arguments shape every answer as much as the weights do;
    # a version's own are in its dump below.
    shaping = model.model_dump(
        mode="json",
        include={
            "inputs",
            "outputs",
            "handler",
            "handler_args",
            "batching",
            "instances",
            "device",
            "warmup",
        },
    )
    # NOTE: when and for how long a version is held does not shape it: changing ``load``
    # or ``resident`` reloads nothing.
    own = version.model_dump(mode="json", exclude={"load", "resident"})
    document = {"model": shaping, "version": own}
    payload = orjson.dumps(document, option=orjson.OPT_SORT_KEYS) + weights_digest.encode()
    return hashlib.sha256(payload).hexdigest()


class AliasMove(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    alias: str
    before: str | None
    after: str | None


@dataclass(frozen=True)
class Plan:
    """The difference between the loaded table and a manifest, before any loading."""

    manifest: Manifest
    added: tuple[VersionKey, ...]
    removed: tuple[VersionKey, ...]
    reloaded: tuple[VersionKey, ...]
    unchanged: tuple[VersionKey, ...]
    alias_moves: tuple[AliasMove, ...]
    deferred: tuple[VersionKey, ...] = ()
    """Added or changed lazy versions not in memory now: left unloaded until asked for."""
    fingerprints: Mapping[VersionKey, str] = field(default_factory=dict)

    @property
    def removes_every_model(self) -> bool:
        """No model named before is named still: what a truncated or wrong file looks like.

        NOTE: by name, so replacing a model's only version with a new one is not removal.
        """
        before = {key.model for key in self.removed + self.unchanged + self.reloaded}
        after = {model.name for model in self.manifest.models}
        return bool(before) and not before & after

    @property
    def to_load(self) -> tuple[VersionKey, ...]:
        return tuple(k for k in self.added + self.reloaded if k not in self.deferred)


def specs(manifest: Manifest, key: VersionKey) -> tuple[ModelSpec, VersionSpec]:
    """The model and version specs a key names in ``manifest``."""
    model = next(m for m in manifest.models if m.name == key.model)
    return model, next(v for v in model.versions if v.version == key.version)


def plan(
    loaded: Mapping[VersionKey, str | None],
    current: Mapping[str, ModelSpec],
    manifest: Manifest,
    fingerprints: Mapping[VersionKey, str],
    in_memory: Set[VersionKey] = frozenset(),
) -> Plan:
    """Compare ``loaded`` (fingerprint, or None where a version failed) to a manifest.

    A version that failed is reloaded even when unchanged, so a reload is also the way to
    retry it. An unloaded version keeps its fingerprint, so an unchanged one stays
    unloaded. A lazy version to load is deferred unless it is in memory now (``in_memory``):
    a version that requests use is replaced by its new self at once.
    """
    wanted = [VersionKey(m.name, v.version) for m in manifest.models for v in m.versions]
    wanted_set = set(wanted)
    added = tuple(k for k in wanted if k not in loaded)
    kept = [k for k in wanted if k in loaded]
    unchanged = tuple(k for k in kept if loaded[k] is not None and loaded[k] == fingerprints.get(k))
    reloaded = tuple(k for k in kept if k not in unchanged)
    removed = tuple(k for k in loaded if k not in wanted_set)
    lazy = {VersionKey(m.name, v.version) for m in manifest.models for v in m.versions if m.lazy(v)}
    return Plan(
        manifest=manifest,
        added=added,
        removed=removed,
        reloaded=reloaded,
        unchanged=unchanged,
        alias_moves=_alias_moves(current, manifest),
        deferred=tuple(k for k in added + reloaded if k in lazy and k not in in_memory),
        fingerprints=dict(fingerprints),
    )


def _alias_moves(current: Mapping[str, ModelSpec], manifest: Manifest) -> tuple[AliasMove, ...]:
    """Aliases, and the default version as the pseudo-alias ``(default)``, that change."""
    new = {m.name: m for m in manifest.models}
    moves = []
    for name in sorted(set(current) | set(new)):
        before, after = _pointers(current.get(name)), _pointers(new.get(name))
        for alias in sorted(set(before) | set(after)):
            if before.get(alias) != after.get(alias):
                moves.append(
                    AliasMove(
                        model=name, alias=alias, before=before.get(alias), after=after.get(alias)
                    )
                )
    return tuple(moves)


def _pointers(spec: ModelSpec | None) -> dict[str, str]:
    if spec is None:
        return {}
    return {**spec.aliases, "(default)": spec.resolved_default}


def table_after(plan: Plan, current: Table, fresh: Mapping[VersionKey, LoadedModel]) -> Table:
    """The table for the plan's manifest: ``fresh`` versions in new slots, deferred ones
    unloaded, the rest carried in their state (with the manifest's spec of them)."""
    table = {}
    for spec in plan.manifest.models:
        versions = {}
        for version in spec.versions:
            key = VersionKey(spec.name, version.version)
            if key in fresh:
                model = fresh[key]
                slot = VersionSlot(version, model, loaded_fingerprint(model))
            elif key in plan.deferred:
                slot = unloaded_slot(version, plan.fingerprints[key])
            else:
                slot = _carried(current[spec.name].versions[version.version], spec, version)
            versions[version.version] = slot
        table[spec.name] = ModelEntry(spec, versions)
    return table


def unloaded_slot(version: VersionSpec, fingerprint: str) -> VersionSlot:
    """A lazy version not asked for yet."""
    return VersionSlot(version, fingerprint=fingerprint, unloaded=True, on_demand=True)


def _carried(slot: VersionSlot, model: ModelSpec, version: VersionSpec) -> VersionSlot:
    """An unchanged version's slot, with what may change without a load: its ``load`` and
    ``resident`` (``table.CARRIED``). The same slot when nothing did; a load under way
    finds its place in the copy too (``table.same_place``)."""
    on_demand = slot.on_demand or model.lazy(version)
    if slot.spec == version and slot.on_demand == on_demand:
        return slot
    return replace(slot, spec=version, on_demand=on_demand)
