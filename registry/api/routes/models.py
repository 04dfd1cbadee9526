"""Model metadata routes: what is served, in which state (predictions: ``predict.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from registry.api.deps import RegistryDep
from registry.api.schemas import (
    ErrorEnvelope,
    ModelInfo,
    ModelList,
    OutputSchema,
    TensorSchema,
    VersionInfo,
)
from registry.repository import ModelRepository
from registry.status import ModelStatus, RegistryStatus, VersionStatus
from registry.table import resolve

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(registry: RegistryDep, request: Request) -> ModelList:
    """Every model with its versions, their state, load time and memory, and the
    fingerprint of the manifest served."""
    status = registry.status()
    repository: ModelRepository = request.scope["state"]["repository"]
    return ModelList(
        models=[_model_info(model, status.draining) for model in status.models.values()],
        loading=[str(key) for key in status.loading],
        draining=[str(version.key) for version in status.draining],
        manifest_sha256=repository.manifest_sha256,
    )


@router.get("/models/{name}", responses={404: {"model": ErrorEnvelope}})
async def get_model_info(name: str, registry: RegistryDep) -> ModelInfo:
    """One model's input and output schema and its versions."""
    return model_info(registry.status(), name)


def model_info(status: RegistryStatus, name: str) -> ModelInfo:
    """What ``/models/{name}`` answers; 404 for a model the manifest lacks."""
    model, _ = resolve(status.models, name, None)
    return _model_info(model, status.draining)


def _model_info(model: ModelStatus, draining: tuple[VersionStatus, ...]) -> ModelInfo:
    spec = model.spec
    versions = [*model.versions, *(v for v in draining if v.key.model == spec.name)]
    inputs = [TensorSchema(name=i.name, shape=list(i.shape), dtype=i.dtype) for i in spec.inputs]
    only = spec.outputs[0]
    default = next((v for v in model.versions if v.spec.version == spec.resolved_default), None)
    return ModelInfo(
        name=spec.name,
        description=spec.description,
        input=inputs[0] if len(inputs) == 1 else None,
        labels=list(only.labels) if len(spec.outputs) == 1 and only.labels else None,
        inputs=inputs,
        outputs=[
            OutputSchema(
                name=o.name,
                shape=None if o.shape is None else list(o.shape),
                dtype=o.dtype,
                labels=None if o.labels is None else list(o.labels),
            )
            for o in spec.outputs
        ],
        handler=spec.handler_of(default.spec)[0] if default else spec.handler,
        device=spec.device,
        instances=spec.instances,
        default_version=spec.resolved_default,
        aliases=dict(spec.aliases),
        versions=[_version_info(v) for v in versions],
        state=model.state,
    )


def _version_info(version: VersionStatus) -> VersionInfo:
    return VersionInfo(
        version=version.spec.version,
        format=version.spec.format,
        state=version.state,
        error=version.reason,
        sha256=version.spec.sha256,
        load_ms=_rounded(version.load_ms),
        warmup_ms=_rounded(version.warmup_ms),
        memory_bytes=version.memory_bytes,
        in_flight=version.leases,
        queue_depth=version.queue_depth,
        load=("lazy" if version.lazy else "eager"),
        resident=version.resident,
        last_eviction=version.last_eviction,
    )


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)
