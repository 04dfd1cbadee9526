"""``uvicorn tests.failing_handler_app:create_app --factory``: the registry's app with a
route that raises and an ``Exception`` handler that raises too, so that an exception gets
past ``Observe``, the outermost layer a request meets, to the server itself."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from registry.app import create_app as create_registry_app


def create_app() -> FastAPI:
    app = create_registry_app()

    @app.get("/raises")
    async def raises() -> None:
        raise RuntimeError("a bug in a route")

    async def failing_handler(_request: Request, _exc: Exception) -> JSONResponse:
        raise RuntimeError("a bug in the handler for Exception")

    app.add_exception_handler(Exception, failing_handler)
    return app
