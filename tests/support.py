"""Helpers shared by tests: settings, readiness, and a started registry always closed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr

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


def make_settings(directory: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "manifest": directory / "models.yaml",
        "admin_token": SecretStr("t"),
        "torch_threads": 1,
        **overrides,
    }
    return Settings.model_validate(values)


class FatalRecorder:
    """Stands in for the process-ending reaction to a strict start-up failure."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(client.get("/readyz").json())
        time.sleep(0.02)
