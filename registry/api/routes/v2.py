"""The Open Inference Protocol (KServe V2) subset that ``tritonclient`` and KServe use.

Health, server and model metadata, readiness, and ``infer`` (JSON or Triton's binary
tensor extension), on the same registry leases, batchers and timeouts as ``/models``.
Errors here are the protocol's ``{"error": "message"}`` (see ``api/errors.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from registry import __version__
from registry.api.deps import (
    BodyDep,
    DefaultModelDep,
    RegistryDep,
    SettingsDep,
    VersionedModelDep,
)
from registry.errors import NotReady
from registry.model import LoadedModel
from registry.serving import provenance, run
from registry.settings import Settings
from registry.v2 import DATATYPES, INPUT, OUTPUT, decode_infer, encode_infer

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "registry", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(registry: RegistryDep) -> dict[str, bool]:
    if not registry.ready:
        raise NotReady("models are still loading")
    return {"ready": True}


@router.get("/models/{name}")
async def model_metadata(model: DefaultModelDep) -> dict[str, Any]:
    return _metadata(model)


@router.get("/models/{name}/versions/{version}")
async def version_metadata(model: VersionedModelDep) -> dict[str, Any]:
    return _metadata(model)


@router.get("/models/{name}/ready")
async def model_ready(model: DefaultModelDep) -> dict[str, Any]:
    return {"name": model.name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
async def version_ready(model: VersionedModelDep) -> dict[str, Any]:
    return {"name": model.name, "ready": True}


# NOTE: the body comes before the model: no lease is held while a client is still sending.
@router.post("/models/{name}/infer")
async def infer(
    body: BodyDep, model: DefaultModelDep, request: Request, settings: SettingsDep
) -> Response:
    return await _infer(body, model, request, settings)


@router.post("/models/{name}/versions/{version}/infer")
async def infer_version(
    body: BodyDep, model: VersionedModelDep, request: Request, settings: SettingsDep
) -> Response:
    return await _infer(body, model, request, settings)


def _metadata(model: LoadedModel) -> dict[str, Any]:
    spec = model.spec
    return {
        "name": model.name,
        "versions": [v.version for v in spec.versions],
        "platform": f"pytorch_{model.version.format}",
        "inputs": [
            {
                "name": INPUT,
                "datatype": DATATYPES[spec.input.dtype],
                "shape": [-1, *spec.input.shape],
            }
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1]}],
    }


async def _infer(
    received: bytes, model: LoadedModel, request: Request, settings: Settings
) -> Response:
    header = request.headers.get("inference-header-content-length")
    document, instances = decode_infer(
        received, header, model.spec.input, max_rows=model.spec.batching.max_batch_size
    )
    outputs = await run(model, instances.array, settings.request_timeout_s)
    body, json_length = encode_infer(
        model.name, model.version.version, document, outputs, instances.batched
    )
    headers = provenance(model)
    if json_length is not None:
        headers["Inference-Header-Content-Length"] = str(json_length)
        return Response(body, media_type="application/octet-stream", headers=headers)
    return Response(body, media_type="application/json", headers=headers)
