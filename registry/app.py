"""``create_app(settings)``: the FastAPI application, its middleware and its lifespan.

``uvicorn registry.app:create_app --factory`` builds it from the environment;
``registry serve`` builds it from flags over the environment. Nothing here runs at import.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from registry import __version__, tracing
from registry.api.application import Application
from registry.api.errors import EXCEPTION_HANDLERS
from registry.api.fastpath import PredictFastPath
from registry.api.limits import BodySizeLimit
from registry.api.observe import Observe
from registry.api.routes import admin, health, management, models, predict, v2
from registry.api.trace import Trace
from registry.lifespan import Fatal, serving_lifespan
from registry.logs import configure_logging_once
from registry.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _terminate_self() -> None:
    """Default reaction to a strict start-up failure when no server hook is given.

    NOTE: uvicorn offers no public way to stop from inside the app; SIGTERM runs its
    graceful shutdown, after which it re-raises the signal, so the exit status is non-zero.
    """
    signal.raise_signal(signal.SIGTERM)


def create_app(
    settings: Settings | None = None,
    *,
    on_fatal: Fatal | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the application; ``on_fatal`` is called when strict start-up fails.

    Its middleware, outermost first: request ids, metrics, the access log and the answer
    to any exception (``Observe``; FastAPI's layers outside it are idle, and left out as
    ``registry.api.application`` says), the streaming body limit and deadline
    (``BodySizeLimit``), the predict fast path (which calls the routes' own dependencies
    and endpoints, so it reads each body through the limit), then Starlette's
    ``ExceptionMiddleware`` and the router.

    Logging is configured here from the settings unless something configured it first
    (``registry serve`` does, and so does a ``--log-config`` that sets up the root logger).
    """
    settings = settings or Settings()
    fatal = on_fatal or _terminate_self
    # NOTE: tracing is off unless configured (``registry.tracing``); tests hand in their own.
    provider = tracer_provider or tracing.configure(settings)
    configure_logging_once(settings)

    app = Application(
        title="registry",
        version=__version__,
        summary="Many named PyTorch models over HTTP from one YAML manifest.",
        lifespan=serving_lifespan(settings, fatal, provider),
        exception_handlers=EXCEPTION_HANDLERS,
        # NOTE: the request metrics and logs are Observe's. FastAPI's native OpenTelemetry
        # would look up the global providers on every request to find none configured.
        telemetry=NO_TELEMETRY,
    )
    routers = (models, predict, admin, management, health, v2)
    for router in (module.router for module in routers):
        app.include_router(router)
    # NOTE: each add_middleware wraps what was added before: innermost first.
    if settings.fast_path:
        app.add_middleware(PredictFastPath, endpoints=predict.ENDPOINTS)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    if provider is not None:
        app.add_middleware(Trace, tracer=provider.get_tracer("registry"))
    app.add_middleware(Observe, log_requests=settings.access_log)
    return app
