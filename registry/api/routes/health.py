"""Liveness and readiness, for load balancers and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from registry.api.deps import MetricsDep, RegistryDep
from registry.api.schemas import ErrorEnvelope, Readiness
from registry.errors import NotReady
from registry.metrics import CONTENT_TYPE
from registry.table import VersionState, slots

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves HTTP, even while models load."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorEnvelope}})
async def readyz(registry: RegistryDep) -> Readiness:
    """200 once start-up loading finished; 503 (with what is pending) before."""
    table = registry.table
    if not registry.ready:
        states = [(str(key), slot.state) for key, slot in slots(table)]
        raise NotReady(
            "models are still loading",
            pending=[key for key, state in states if state is VersionState.LOADING],
            failed=[key for key, state in states if state is VersionState.FAILED],
        )
    return Readiness(
        status="ready",
        models=len(table),
        versions=sum(len(entry.versions) for entry in table.values()),
    )


@router.get("/metrics", response_class=Response)
async def metrics(collected: MetricsDep) -> Response:
    """Prometheus text format; per-model series carry the labels ``model`` and ``version``."""
    return Response(collected.render(), media_type=CONTENT_TYPE)
