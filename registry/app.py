"""``create_app(settings)``: the FastAPI application and its lifespan.

``uvicorn registry.app:create_app --factory`` builds it from the environment;
``registry serve`` builds it from flags over the environment. Nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI
from starlette.types import ASGIApp

from registry import __version__
from registry.api.errors import EXCEPTION_HANDLERS
from registry.api.fastpath import PredictFastPath
from registry.api.limits import BodySizeLimit
from registry.api.observe import Observe
from registry.api.routes import admin, health, models, v2
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


def _terminate_self() -> None:
    """Default reaction to a strict start-up failure when no server hook is given.

    NOTE: uvicorn offers no public way to stop from inside the app; SIGTERM runs its
    graceful shutdown, after which it re-raises the signal, so the exit status is non-zero.
    """
    signal.raise_signal(signal.SIGTERM)


def create_app(settings: Settings | None = None, *, on_fatal: Fatal | None = None) -> ASGIApp:
    """Build the application; ``on_fatal`` is called when strict start-up fails.

    The FastAPI app holds every route; around it, outermost first: request ids, metrics
    and access log (``Observe``), the predict fast path, and the streaming body limit
    (which the fast path enforces itself as it reads).
    """
    settings = settings or Settings()
    fatal = on_fatal or _terminate_self

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

    app = FastAPI(
        title="registry",
        version=__version__,
        summary="Many named PyTorch models over HTTP from one YAML manifest.",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    for router in (models.router, admin.router, health.router, v2.router):
        app.include_router(router)
    served: ASGIApp = BodySizeLimit(app, max_body_bytes=settings.max_body_bytes)
    if settings.fast_path:
        served = PredictFastPath(served, max_body_bytes=settings.max_body_bytes)
    return Observe(served, log_requests=settings.access_log)


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
