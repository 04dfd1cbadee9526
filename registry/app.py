"""``create_app(settings)``: the FastAPI application and its lifespan.

``uvicorn registry.app:create_app --factory`` builds it from the environment;
``registry serve`` builds it from flags over the environment. Nothing here runs at import.
"""

from __future__ import annotations

import signal

from fastapi import FastAPI
from starlette.types import ASGIApp

from registry import __version__
from registry.api.errors import EXCEPTION_HANDLERS
from registry.api.fastpath import PredictFastPath
from registry.api.limits import BodySizeLimit
from registry.api.observe import Observe
from registry.api.routes import admin, health, models, predict, v2
from registry.lifespan import Fatal, serving_lifespan
from registry.settings import Settings


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

    app = FastAPI(
        title="registry",
        version=__version__,
        summary="Many named PyTorch models over HTTP from one YAML manifest.",
        lifespan=serving_lifespan(settings, fatal),
        exception_handlers=EXCEPTION_HANDLERS,
    )
    for router in (models.router, predict.router, admin.router, health.router, v2.router):
        app.include_router(router)
    served: ASGIApp = BodySizeLimit(app, max_body_bytes=settings.max_body_bytes)
    if settings.fast_path:
        served = PredictFastPath(served, max_body_bytes=settings.max_body_bytes)
    return Observe(served, log_requests=settings.access_log)
