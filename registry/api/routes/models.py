"""Model metadata routes: what is served, in which state (predictions: ``predict.py``)."""

from __future__ import annotations

from fastapi import APIRouter

from registry.api.deps import RegistryDep
from registry.api.schemas import (
    ErrorEnvelope,
    ModelInfo,
    ModelList,
    TensorSchema,
    VersionInfo,
)
from registry.errors import ModelNotFound
from registry.manifest import VersionSpec
from registry.model import LoadedModel
from registry.table import ModelEntry, VersionState

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(registry: RegistryDep) -> ModelList:
    """Every model with its versions, their state, load time and memory."""
    draining = registry.draining
    return ModelList(
        models=[_model_info(entry, draining) for entry in registry.table.values()],
        loading=[str(key) for key in registry.pending],
        draining=[str(model.key) for model in draining],
    )


@router.get("/models/{name}", responses={404: {"model": ErrorEnvelope}})
async def get_model_info(name: str, registry: RegistryDep) -> ModelInfo:
    """One model's input and output schema and its versions."""
    entry = registry.table.get(name)
    if entry is None:
        raise ModelNotFound(f"no model {name!r}", available=sorted(registry.table))
    return _model_info(entry, registry.draining)


def _model_info(entry: ModelEntry, draining: list[LoadedModel]) -> ModelInfo:
    spec = entry.spec
    versions = [
        _version_info(slot.spec, slot.state, slot.model, slot.error)
        for slot in entry.sorted_versions()
    ]
    states = {v.state for v in versions}
    versions += [
        _version_info(model.version_spec, VersionState.DRAINING, model)
        for model in draining
        if model.name == spec.name
    ]
    state = next(
        (s for s in (VersionState.FAILED, VersionState.LOADING) if s in states),
        VersionState.READY,
    )
    return ModelInfo(
        name=spec.name,
        description=spec.description,
        input=TensorSchema(shape=list(spec.input.shape), dtype=spec.input.dtype),
        labels=list(spec.output.labels) if spec.output.labels else None,
        device=spec.device,
        default_version=spec.resolved_default,
        aliases=dict(spec.aliases),
        versions=versions,
        state=state,
    )


def _version_info(
    spec: VersionSpec, state: VersionState, model: LoadedModel | None, error: str | None = None
) -> VersionInfo:
    return VersionInfo(
        version=spec.version,
        format=spec.format,
        state=state,
        error=error,
        sha256=spec.sha256,
        load_ms=round(model.load_ms, 3) if model else None,
        warmup_ms=round(model.warmup_ms, 3) if model else None,
        memory_bytes=model.memory_bytes if model else None,
        in_flight=model.leases if model else 0,
        queue_depth=model.queue_depth if model else 0,
    )
