"""The management API: load and unload what the manifest declares, behind the admin token.

Two doors onto the same calls: the V2 model repository extension, which ``tritonclient``
and KServe tooling speak (``/v2/repository/...``), and ``/admin/models/...``, which can
also name one version. Only versions the manifest declares can be loaded: a request names
a model and a version, never a file, and a load request that carries a model
configuration or files of its own is refused.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, ValidationError

from registry.api.deps import AdminDep, BodyDep, RegistryDep
from registry.api.routes.models import model_info
from registry.api.schemas import ErrorEnvelope, ModelInfo
from registry.api.v2_schemas import errors
from registry.errors import BadRequest, InvalidJSON
from registry.keys import VersionKey
from registry.repository import ModelRepository
from registry.repository.demand import OnDemand
from registry.status import VersionStatus
from registry.table import VersionState

router = APIRouter(tags=["management"])


async def get_on_demand(request: Request) -> OnDemand:
    repository: ModelRepository = request.scope["state"]["repository"]
    return repository.on_demand


OnDemandDep = Annotated[OnDemand, Depends(get_on_demand)]

_TRITON_STATES = {
    VersionState.READY: "READY",
    VersionState.LOADING: "LOADING",
    VersionState.EVICTING: "UNLOADING",
    VersionState.UNLOADED: "UNAVAILABLE",
    VersionState.FAILED: "UNAVAILABLE",
}


class IndexEntry(BaseModel):
    """One version, as Triton's repository index lists it."""

    name: str
    version: str
    state: str = Field(description="READY | LOADING | UNLOADING | UNAVAILABLE")
    reason: str = Field(description="unloaded, evicting, or why it failed to load")


class IndexRequest(BaseModel):
    ready: bool = Field(default=False, description="List only the versions ready now")


def _json_body(body: bytes) -> dict[str, Any]:
    """A management request's JSON object; an empty body is ``{}`` (``tritonclient``
    sends one to ``index``)."""
    if not body.strip():
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("the body must be a JSON object")
    return parsed


def _refuse_configuration(body: bytes) -> None:
    """A load names a version of the manifest; a configuration or files sent with it
    (Triton's ``config`` and ``file:`` parameters) would load something else."""
    parameters = _json_body(body).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    if sent := sorted(p for p in parameters if p == "config" or p.startswith("file:")):
        raise BadRequest(
            f"this server loads only what its manifest declares; remove {sent} "
            "and change the manifest instead"
        )


@router.post("/v2/repository/index", responses=errors(400, 401, 403))
async def repository_index(_: AdminDep, registry: RegistryDep, body: BodyDep) -> list[IndexEntry]:
    """Every version the manifest declares, with its state; ``{"ready": true}`` for only
    the ready ones."""
    try:
        only_ready = IndexRequest.model_validate(_json_body(body)).ready
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise BadRequest(f"the body is not an index request ({problems})") from None
    return [
        _index_entry(version)
        for version in registry.status().versions()
        if version.state is VersionState.READY or not only_ready
    ]


def _index_entry(version: VersionStatus) -> IndexEntry:
    reason = version.reason if version.state is VersionState.FAILED else ""
    if version.state in (VersionState.UNLOADED, VersionState.EVICTING):
        reason = version.state.value
    return IndexEntry(
        name=version.key.model,
        version=version.key.version,
        state=_TRITON_STATES[version.state],
        reason=reason or "",
    )


@router.post("/v2/repository/models/{name}/load", responses=errors(400, 401, 403, 404, 503))
async def v2_load(name: str, _: AdminDep, on_demand: OnDemandDep, body: BodyDep) -> dict[str, str]:
    """Load every version of the model (those in memory stay as they are)."""
    _refuse_configuration(body)
    await _load(on_demand, _keys(on_demand, name, None))
    return {}


@router.post("/v2/repository/models/{name}/unload", responses=errors(400, 401, 403, 404, 503))
async def v2_unload(
    name: str, _: AdminDep, on_demand: OnDemandDep, body: BodyDep
) -> dict[str, str]:
    """Unload every version of the model; requests in flight finish first."""
    _json_body(body)
    for key in _keys(on_demand, name, None):
        on_demand.unload(key)
    return {}


_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope} for status in (401, 403, 404, 503)
}


@router.post("/admin/models/{name}/load", responses=_ADMIN_ERRORS)
async def load_model(
    name: str, _: AdminDep, on_demand: OnDemandDep, registry: RegistryDep
) -> ModelInfo:
    """Load every version of the model; answers with its versions' states after."""
    await _load(on_demand, _keys(on_demand, name, None))
    return model_info(registry.status(), name)


@router.post("/admin/models/{name}/versions/{version}/load", responses=_ADMIN_ERRORS)
async def load_version(
    name: str, version: str, _: AdminDep, on_demand: OnDemandDep, registry: RegistryDep
) -> ModelInfo:
    """Load one version (or the version an alias names)."""
    await _load(on_demand, _keys(on_demand, name, version))
    return model_info(registry.status(), name)


@router.post("/admin/models/{name}/unload", responses=_ADMIN_ERRORS)
async def unload_model(
    name: str, _: AdminDep, on_demand: OnDemandDep, registry: RegistryDep
) -> ModelInfo:
    """Unload every version of the model; a lazy one loads again on its next request."""
    for key in _keys(on_demand, name, None):
        on_demand.unload(key)
    return model_info(registry.status(), name)


@router.post("/admin/models/{name}/versions/{version}/unload", responses=_ADMIN_ERRORS)
async def unload_version(
    name: str, version: str, _: AdminDep, on_demand: OnDemandDep, registry: RegistryDep
) -> ModelInfo:
    """Unload one version (or the version an alias names)."""
    on_demand.unload(on_demand.key(name, version))
    return model_info(registry.status(), name)


def _keys(on_demand: OnDemand, name: str, version: str | None) -> list[VersionKey]:
    """The one version named, or every version of the model; 404 for what the manifest
    lacks."""
    if version is not None:
        return [on_demand.key(name, version)]
    return on_demand.versions(name)


async def _load(on_demand: OnDemand, keys: list[VersionKey]) -> None:
    for key in keys:
        await on_demand.load(key)
