"""Operator calls: off unless ``REGISTRY_ADMIN_TOKEN`` is set; bearer token required."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request

from registry.api.deps import AdminDep
from registry.api.schemas import ErrorEnvelope
from registry.repository import ModelRepository, ReloadReport

router = APIRouter(prefix="/admin", tags=["admin"])


async def get_repository(request: Request) -> ModelRepository:
    return cast(ModelRepository, request.state.repository)


RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]


@router.post(
    "/reload",
    responses={
        401: {"model": ErrorEnvelope, "description": "Missing or wrong bearer token"},
        403: {"model": ErrorEnvelope, "description": "Admin API off (no token configured)"},
        422: {"model": ErrorEnvelope, "description": "Invalid manifest or a failed load"},
    },
)
async def reload(
    caller: AdminDep,
    repository: RepositoryDep,
    dry_run: bool = False,
    allow_remove_all: bool = False,
) -> ReloadReport:
    """Re-read the manifest (a setting, never from the request) and apply the difference.

    Loads new and changed versions beside the live ones, then swaps them in at once;
    if any fails, nothing changes. A second reload waits for the first.
    ``dry_run=true`` validates and returns the plan without loading anything. A manifest
    that keeps none of the models served now is refused (422 ``removes_every_model``)
    unless ``allow_remove_all=true``.
    """
    return await repository.reload(actor=caller, dry_run=dry_run, allow_remove_all=allow_remove_all)
