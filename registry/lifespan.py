"""The application's lifespan: what runs between start-up and shutdown, and who owns it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from registry.core import ModelRegistry
from registry.metrics import Metrics
from registry.settings import Settings
from registry.triggers import ReloadTriggers

log = logging.getLogger(__name__)

Fatal = Callable[[], None]


class AppState(TypedDict):
    registry: ModelRegistry
    settings: Settings
    metrics: Metrics


def serving_lifespan(
    settings: Settings, fatal: Fatal
) -> Callable[[FastAPI], AbstractAsyncContextManager[AppState]]:
    """Start loading, reload triggers and the start-up supervisor; undo them on shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[AppState]:
        registry = ModelRegistry(settings)
        await registry.start()  # an invalid manifest fails start-up here
        supervisor = asyncio.create_task(_supervise(registry, settings, fatal))
        triggers = ReloadTriggers(registry, settings)
        triggers.start()
        try:
            yield {"registry": registry, "settings": settings, "metrics": Metrics(registry)}
        finally:
            supervisor.cancel()
            await triggers.stop()
            await registry.close()

    return lifespan


async def _supervise(registry: ModelRegistry, settings: Settings, fatal: Fatal) -> None:
    failures = await registry.wait_loaded()
    registry.freeze_heap()
    if not failures:
        log.info("ready: every model loaded")
        return
    # NOTE: the registry has logged each failure with its reason as it happened.
    if settings.strict_startup:
        log.critical(
            "strict start-up: %d version(s) failed to load; shutting down "
            "(set REGISTRY_STRICT_STARTUP=false to serve the rest)",
            len(failures),
        )
        fatal()
    else:
        log.warning("serving without %d failed version(s)", len(failures))
