"""Dependencies as named types, so routes read like prose.

The registry comes from Starlette lifespan state (never a module global); a model comes
as a lease that is held until the route returns. A route that reads a body takes
``BodyDep`` before its model, so that the lease starts only once the body is in.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from registry.core import ModelRegistry
from registry.errors import (
    AdminDisabled,
    ClientClosedRequest,
    Unauthorized,
)
from registry.metrics import Metrics
from registry.model import LoadedModel
from registry.repository import ModelRepository
from registry.settings import Settings

# NOTE: the lifespan state as the scope holds it; ``request.state`` wraps that same dict in
# an object per request, which the predict routes would pay for on every call.


async def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.scope["state"]["registry"]
    return registry


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.scope["state"]["settings"]
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.scope["state"]["metrics"]
    return metrics


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def read_body(request: Request) -> bytes:
    """The whole body; ``BodySizeLimit`` bounds its size and how long it may take.

    NOTE: FastAPI solves a route's dependencies in the order of its parameters, so a route
    that names this before its model holds no lease while a slow client is still sending.

    It reads the messages itself and leaves the body where ``request.body()`` finds it
    (``_body``, as FastAPI's documentation does for a custom request class): Starlette's
    ``body()`` goes through an async generator and ``aclosing``, several times the cost of
    this loop on every prediction.
    """
    if hasattr(request, "_body"):
        return request._body
    receive = request.receive
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body
    return body


BodyDep = Annotated[bytes, Depends(read_body)]


# NOTE: the model dependencies read the repository from the lifespan state themselves
# rather than through a dependency of their own: one dependency less to call on every
# prediction, through either door.


async def get_default_model(name: str, request: Request) -> AsyncIterator[LoadedModel]:
    state = request.scope["state"]
    repository: ModelRepository = state["repository"]
    with await repository.on_demand.lease(name, None) as model:
        state["served"] = (model.name, model.version)  # metrics, logs
        yield model


async def get_model_version(
    name: str, version: str, request: Request
) -> AsyncIterator[LoadedModel]:
    state = request.scope["state"]
    repository: ModelRepository = state["repository"]
    with await repository.on_demand.lease(name, version) as model:
        state["served"] = (model.name, model.version)
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
