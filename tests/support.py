"""Helpers shared by tests: a started registry that is always closed, whatever happens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from registry.core import ModelRegistry
from registry.repository import ModelRepository
from registry.settings import Settings
from registry.tasks import Background


@dataclass(frozen=True)
class Running:
    """What the application's lifespan holds: the registry, its repository, their tasks."""

    background: Background
    registry: ModelRegistry
    repository: ModelRepository


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """Start loading ``settings``' manifest; close everything on the way out, failed or not."""
    background = Background()
    registry = ModelRegistry(background)
    repository = ModelRepository(settings, registry, background)
    try:
        await repository.start()
        yield Running(background, registry, repository)
    finally:
        await repository.close()
        await registry.close()
        await background.close()
