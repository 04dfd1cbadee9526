"""Liveness and readiness, for load balancers and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from registry.api.deps import MetricsDep, RegistryDep
from registry.api.schemas import ErrorEnvelope, Readiness
from registry.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves HTTP, even while models load."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorEnvelope}})
async def readyz(registry: RegistryDep) -> Readiness:
    """200 once start-up loading finished; 503 (with what is pending) before."""
    status = registry.status()
    if not status.ready:
        raise status.not_ready()
    return Readiness(
        status="ready",
        models=len(status.models),
        versions=sum(len(model.versions) for model in status.models.values()),
    )


@router.get("/metrics", response_class=Response)
async def metrics(collected: MetricsDep) -> Response:
    """Prometheus text format; per-model series carry the labels ``model`` and ``version``."""
    return Response(collected.render(), media_type=CONTENT_TYPE)
