"""Dependencies as named types, so routes read like prose.

The registry comes from Starlette lifespan state (never a module global); a model comes
as a lease that is held until the route returns. A route that reads a body takes
``BodyDep`` before its model, so that the lease starts only once the body is in.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect

from registry.core import ModelRegistry
from registry.errors import AdminDisabled, ClientClosedRequest, Unauthorized
from registry.metrics import Metrics
from registry.model import LoadedModel
from registry.settings import Settings


async def get_registry(request: Request) -> ModelRegistry:
    return cast(ModelRegistry, request.state.registry)


async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.state.settings)


async def get_metrics(request: Request) -> Metrics:
    return cast(Metrics, request.state.metrics)


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def read_body(request: Request) -> bytes:
    """The whole body; ``BodySizeLimit`` bounds its size and how long it may take.

    NOTE: FastAPI solves a route's dependencies in the order of its parameters, so a route
    that names this before its model holds no lease while a slow client is still sending.
    """
    try:
        return await request.body()
    except ClientDisconnect:
        raise ClientClosedRequest() from None


BodyDep = Annotated[bytes, Depends(read_body)]


async def get_default_model(
    name: str, registry: RegistryDep, request: Request
) -> AsyncIterator[LoadedModel]:
    with registry.lease(name) as model:
        request.state.served = (model.name, model.version)  # for metrics and logs
        yield model


async def get_model_version(
    name: str, version: str, registry: RegistryDep, request: Request
) -> AsyncIterator[LoadedModel]:
    with registry.lease(name, version) as model:
        request.state.served = (model.name, model.version)
        yield model


DefaultModelDep = Annotated[LoadedModel, Depends(get_default_model, scope="function")]
VersionedModelDep = Annotated[LoadedModel, Depends(get_model_version, scope="function")]


async def require_admin(request: Request, settings: SettingsDep) -> str:
    """Check ``Authorization: Bearer <REGISTRY_ADMIN_TOKEN>``; returns the caller's token id.

    With no token configured the admin API is off (403) whatever the request says. The
    comparison is constant-time; the id is a digest prefix, safe to log.
    """
    if settings.admin_token is None:
        raise AdminDisabled()
    expected = settings.admin_token.get_secret_value().encode()
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        presented.strip().encode(), expected
    ):
        raise Unauthorized()
    return "token:" + hashlib.sha256(expected).hexdigest()[:8]


AdminDep = Annotated[str, Depends(require_admin)]
