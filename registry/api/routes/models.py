"""Model metadata and prediction routes."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response

from registry import serving
from registry.api.deps import (
    BodyDep,
    DefaultModelDep,
    RegistryDep,
    SettingsDep,
    VersionedModelDep,
)
from registry.api.schemas import (
    BINARY,
    ErrorEnvelope,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
    TensorSchema,
    VersionInfo,
    own_body_post,
)
from registry.errors import ModelNotFound
from registry.manifest import VersionSpec
from registry.model import LoadedModel
from registry.settings import Settings
from registry.table import ModelEntry, VersionState

router = APIRouter(tags=["models"])

_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": PredictResponse,
        "content": {"application/octet-stream": BINARY, "application/x-npy": BINARY},
        "description": "Outputs of the resolved version, as JSON or as `Accept` asks",
    },
    400: {"model": ErrorEnvelope, "description": "The body is not JSON"},
    404: {"model": ErrorEnvelope, "description": "Unknown model or version"},
    408: {"model": ErrorEnvelope, "description": "Body slower than REGISTRY_BODY_TIMEOUT_S"},
    413: {
        "model": ErrorEnvelope,
        "description": "Body over REGISTRY_MAX_BODY_BYTES, or more rows than max_batch_size",
    },
    415: {"model": ErrorEnvelope, "description": "Neither JSON, a raw tensor nor .npy"},
    422: {"model": ErrorEnvelope, "description": "Inputs of the wrong shape or dtype"},
    503: {"model": ErrorEnvelope, "description": "Loading, queue full or shutting down"},
    504: {"model": ErrorEnvelope, "description": "Inference timed out"},
}
_PREDICT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()},
        "application/octet-stream": BINARY | {"description": "Raw tensor; X-Shape"},
        "application/x-npy": BINARY,
    },
}
_predict_route = partial(own_body_post, router, responses=_PREDICT_RESPONSES, body=_PREDICT_BODY)


@router.get("/models")
async def list_models(registry: RegistryDep) -> ModelList:
    """Every model with its versions, their state, load time and memory."""
    draining = registry.draining
    return ModelList(
        models=[_model_info(entry, draining) for entry in registry.table.values()],
        loading=[str(key) for key in registry.pending],
        draining=[model.key for model in draining],
    )


@router.get("/models/{name}", responses={404: {"model": ErrorEnvelope}})
async def get_model_info(name: str, registry: RegistryDep) -> ModelInfo:
    """One model's input and output schema and its versions."""
    entry = registry.table.get(name)
    if entry is None:
        raise ModelNotFound(f"no model {name!r}", available=sorted(registry.table))
    return _model_info(entry, registry.draining)


# NOTE: the body comes before the model: no lease is held while a client is still sending.
@_predict_route("/models/{name}/predict")
async def predict(
    body: BodyDep, model: DefaultModelDep, request: Request, settings: SettingsDep
) -> Response:
    """Predict with the default version."""
    return await _predict(body, model, request, settings)


@_predict_route("/models/{name}/versions/{version}/predict")
async def predict_version(
    body: BodyDep, model: VersionedModelDep, request: Request, settings: SettingsDep
) -> Response:
    """Predict with a version number or an alias; the answer names the concrete version."""
    return await _predict(body, model, request, settings)


async def _predict(
    body: bytes, model: LoadedModel, request: Request, settings: Settings
) -> Response:
    answer = await serving.predict(
        model,
        body,
        timeout_s=settings.request_timeout_s,
        content_type=request.headers.get("content-type"),
        shape=request.headers.get("x-shape"),
        accept=request.headers.get("accept"),
    )
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)


def _model_info(entry: ModelEntry, draining: list[LoadedModel]) -> ModelInfo:
    spec = entry.spec
    versions = [
        _version_info(slot.spec, slot.state, slot.model, slot.error)
        for slot in entry.sorted_versions()
    ]
    states = {v.state for v in versions}
    versions += [
        _version_info(model.version, VersionState.DRAINING, model)
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
