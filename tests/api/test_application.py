"""``Application`` serves a request through FastAPI's stack less the layers left idle.

What is left out must be idle for the app as ``create_app`` builds it, and every request
that could give those layers work (a parent application's telemetry or body limit in the
scope) must still go through them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware
from fastapi.testclient import TestClient
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import Receive, Scope, Send

from registry.api.application import AppBodyLimitMiddleware, Application
from registry.api.observe import Observe
from registry.app import NO_TELEMETRY, create_app
from registry.settings import Settings
from tests.factories import LIN_INPUT
from tests.support import wait_ready

needs_body_limits = pytest.mark.skipif(
    AppBodyLimitMiddleware is None, reason="FastAPI before 0.164 has no app-wide body limit"
)


def _chain(app: Any) -> list[type]:
    """The layers of a middleware stack, outermost first, down to the first of ours."""
    layers = []
    while not isinstance(app, Observe):
        layers.append(type(app))
        app = app.app
    return layers


@pytest.fixture
def telemetry_layer_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests that went through FastAPI's exception telemetry layer."""
    calls: list[str] = []
    original = ExceptionTelemetryMiddleware.__call__

    async def counted(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            calls.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(ExceptionTelemetryMiddleware, "__call__", counted)
    return calls


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[FastAPI, TestClient]]:
    app = create_app(settings)
    with TestClient(app) as client:
        wait_ready(client)
        yield app, client


def test_the_lean_stack_starts_at_observe_which_answers_what_fastapis_layers_would(
    served: tuple[FastAPI, TestClient],
) -> None:
    app, _ = served
    assert isinstance(app, Application)
    idle: list[type] = [ServerErrorMiddleware, ExceptionTelemetryMiddleware]
    if AppBodyLimitMiddleware is not None:  # NOTE: FastAPI 0.164 and later
        idle.append(AppBodyLimitMiddleware)
    assert _chain(app.middleware_stack) == idle
    assert isinstance(app.lean_stack, Observe)


def test_a_middleware_outside_observe_keeps_the_last_resort(settings: Settings) -> None:
    app = create_app(settings)
    assert isinstance(app, Application)
    app.add_middleware(_PassThrough)
    with TestClient(app) as client:
        wait_ready(client)
        assert client.post("/models/lin/predict", json={"inputs": LIN_INPUT}).status_code == 200
    lean = app.lean_stack
    full = app.middleware_stack
    assert isinstance(lean, ServerErrorMiddleware)
    assert isinstance(full, ServerErrorMiddleware)
    assert _chain(lean) == [ServerErrorMiddleware, _PassThrough]
    assert (lean.handler, lean.debug) == (full.handler, full.debug)


class _PassThrough:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def test_requests_take_the_lean_stack_and_are_answered_as_before(
    served: tuple[FastAPI, TestClient], telemetry_layer_calls: list[str]
) -> None:
    _, client = served
    answer = client.post("/models/lin/predict", json={"inputs": LIN_INPUT})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"]
    missing = client.post("/models/nope/predict", json={"inputs": LIN_INPUT})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert telemetry_layer_calls == []


@needs_body_limits
def test_a_request_from_a_parent_with_a_body_limit_goes_through_fastapis_own_stack(
    settings: Settings, telemetry_layer_calls: list[str]
) -> None:
    parent = FastAPI(max_body_size=1 << 20, telemetry=NO_TELEMETRY)
    parent.mount("/inner", create_app(settings))
    with TestClient(parent) as client:
        # NOTE: a mounted app has no lifespan: the first request builds its stacks.
        answers = [client.post("/inner/no/such/route", content=b"{}") for _ in range(2)]
    # NOTE: the parent's own stack goes through its telemetry layer, then ours does too.
    assert telemetry_layer_calls == ["/inner/no/such/route"] * 4
    assert [answer.status_code for answer in answers] == [404, 404]
    assert all("x-request-id" in answer.headers for answer in answers)  # NOTE: ours served


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="telemetry-by-default"),
        pytest.param({"telemetry": {"tracing": True}}, id="tracing-on"),
        pytest.param(
            {"telemetry": NO_TELEMETRY, "max_body_size": 100},
            id="app-body-limit",
            marks=needs_body_limits,
        ),
    ],
)
def test_a_configuration_that_gives_those_layers_work_keeps_fastapis_stack(
    options: dict[str, Any], telemetry_layer_calls: list[str]
) -> None:
    app = Application(**options)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    with TestClient(app) as client:
        assert client.get("/ping").json() == "pong"
    assert app.lean_stack is None
    assert telemetry_layer_calls == ["/ping"]
