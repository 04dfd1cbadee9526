"""The Open Inference Protocol (KServe V2) subset that ``tritonclient`` and KServe use.

Health, server and model metadata, readiness, and ``infer`` (JSON or Triton's binary
tensor extension), on the same registry leases, batchers and timeouts as ``/models``.
Errors here are the protocol's ``{"error": "message"}`` (see ``api/errors.py``).
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request, Response

from registry import __version__, tracing
from registry.api.deps import (
    BodyDep,
    DefaultModelDep,
    RegistryDep,
    SettingsDep,
    VersionedModelDep,
)
from registry.api.schemas import own_body_post
from registry.api.v2_schemas import (
    INFER_BODY,
    INFER_RESPONSES,
    Liveness,
    ModelMetadata,
    ModelReadiness,
    ServerMetadata,
    ServerReadiness,
    TensorMetadata,
    errors,
)
from registry.dtypes import DTYPES
from registry.model import LoadedModel
from registry.serving import provenance
from registry.settings import Settings
from registry.v2 import decode_infer, encode_infer

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])


_MODEL_ERRORS = errors(404, 422, 503)


@router.get("")
async def server_metadata() -> ServerMetadata:
    # NOTE: model_repository's routes always exist; they answer 403 until a token is set
    extensions = ["binary_tensor_data", "model_repository"]
    return ServerMetadata(name="registry", version=__version__, extensions=extensions)


@router.get("/health/live")
async def live() -> Liveness:
    return Liveness(live=True)


@router.get("/health/ready", responses=errors(503))
async def ready(registry: RegistryDep) -> ServerReadiness:
    status = registry.status()
    if not status.ready:
        raise status.not_ready()
    return ServerReadiness(ready=True)


@router.get("/models/{name}", responses=_MODEL_ERRORS)
async def model_metadata(model: DefaultModelDep) -> ModelMetadata:
    return metadata(model)


@router.get("/models/{name}/versions/{version}", responses=_MODEL_ERRORS)
async def version_metadata(model: VersionedModelDep) -> ModelMetadata:
    return metadata(model)


@router.get("/models/{name}/ready", responses=_MODEL_ERRORS)
async def model_ready(name: str, registry: RegistryDep) -> ModelReadiness:
    """Ready when the default version serves; 404 or 503 (why not) otherwise."""
    return ModelReadiness(name=registry.status().serving(name).key.model, ready=True)


@router.get("/models/{name}/versions/{version}/ready", responses=_MODEL_ERRORS)
async def version_ready(name: str, version: str, registry: RegistryDep) -> ModelReadiness:
    return ModelReadiness(name=registry.status().serving(name, version).key.model, ready=True)


_infer_route = partial(own_body_post, router, responses=INFER_RESPONSES, body=INFER_BODY)


# NOTE: the body comes before the model: no lease is held while a client is still sending.
@_infer_route("/models/{name}/infer")
async def infer(
    body: BodyDep, model: DefaultModelDep, request: Request, settings: SettingsDep
) -> Response:
    return await _infer(body, model, request, settings)


@_infer_route("/models/{name}/versions/{version}/infer")
async def infer_version(
    body: BodyDep, model: VersionedModelDep, request: Request, settings: SettingsDep
) -> Response:
    return await _infer(body, model, request, settings)


def metadata(model: LoadedModel) -> ModelMetadata:
    spec = model.spec
    inputs = [
        TensorMetadata(name=i.name, datatype=DTYPES[i.dtype].v2, shape=[-1, *i.shape])
        for i in spec.inputs
    ]
    return ModelMetadata(
        name=model.name,
        versions=[v.version for v in spec.versions],
        platform=f"pytorch_{model.version_spec.format}",
        inputs=inputs,
        outputs=_outputs(model),
    )


def _outputs(model: LoadedModel) -> list[TensorMetadata]:
    """Each output as declared, or as a forward pass showed it; one that is neither (the
    manifest turns warm-up off and nothing has run yet) is left out: nothing is guessed."""
    described = []
    for output in model.spec.outputs:
        seen = model.outputs_seen.get(output.name)
        shape = output.shape if output.shape is not None else (seen.shape if seen else None)
        dtype = output.dtype or (seen.dtype.name if seen else None)
        if shape is None or dtype is None:
            continue
        described.append(
            TensorMetadata(name=output.name, datatype=DTYPES[dtype].v2, shape=[-1, *shape])
        )
    return described


async def _infer(
    received: bytes, model: LoadedModel, request: Request, settings: Settings
) -> Response:
    header = request.headers.get("inference-header-content-length")
    spec = model.spec
    document, decoded = tracing.step(
        "decode",
        decode_infer,
        received,
        header,
        spec.inputs,
        spec.outputs,
        spec.batching.max_batch_size,
    )
    outputs = await model.infer_tensors(decoded.tensors, settings.request_timeout_s)
    body, json_length = tracing.step(
        "encode",
        encode_infer,
        model.name,
        model.version,
        document,
        outputs,
        decoded.batched,
        spec.outputs,
    )
    headers = provenance(model)
    if json_length is not None:
        headers["Inference-Header-Content-Length"] = str(json_length)
        return Response(body, media_type="application/octet-stream", headers=headers)
    return Response(body, media_type="application/json", headers=headers)
