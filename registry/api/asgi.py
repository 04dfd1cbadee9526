"""Small helpers for the pure ASGI layers (request ids, fast path, body limit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from starlette._utils import get_route_path  # NOTE: what Starlette's router matches on
from starlette.types import Scope

T = TypeVar("T")

__all__ = ["FromRoutes", "get_route_path", "header"]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class FromRoutes(Generic[T]):
    """Something derived from the serving application's routes, kept in step with them.

    A middleware sees its application as ``scope["app"]`` (Starlette sets it); what it
    derives from ``app.router.routes`` is rebuilt when a route is added, so a router
    included after ``create_app`` counts too. The check is one ``len`` per request.
    """

    __slots__ = ("_app", "_count", "_derive", "_value")

    def __init__(self, derive: Callable[[Any], T]) -> None:
        self._derive = derive
        self._app: object = None
        self._count = -1
        self._value: T | None = None

    def __call__(self, scope: Scope) -> T | None:
        """The value for the application serving ``scope``; None outside any application."""
        app = scope.get("app")
        if app is None:
            return None
        count = len(app.router.routes)
        if app is not self._app or count != self._count:
            self._value = self._derive(app)
            self._app, self._count = app, count
        return self._value
