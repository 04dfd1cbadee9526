"""``create_app`` returns the FastAPI application itself, its layers in its middleware.

So what FastAPI offers an application works on it: ``dependency_overrides`` (through both
doors, which shows the fast path really calls the routes' dependencies), ``openapi()``,
``include_router`` after the fact.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient

from registry.api import deps
from registry.api.fastpath import PredictFastPath
from registry.api.limits import BodySizeLimit
from registry.api.observe import Observe
from registry.api.routes import predict
from registry.app import create_app
from registry.core import ModelRegistry
from registry.model import LoadedModel
from registry.settings import Settings
from tests.factories import LIN_INPUT
from tests.support import wait_ready

BODY = {"inputs": LIN_INPUT}


@pytest.fixture
def app(settings: Settings, fast_path: bool) -> FastAPI:
    return create_app(settings.model_copy(update={"fast_path": fast_path}))


@pytest.fixture
def served(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def test_it_is_the_fastapi_app_with_our_layers_in_its_middleware(
    app: FastAPI, fast_path: bool
) -> None:
    assert isinstance(app, FastAPI)
    layers: list[object] = [middleware.cls for middleware in app.user_middleware]
    expected: list[object] = [Observe, BodySizeLimit]  # outermost first
    assert layers == ([*expected, PredictFastPath] if fast_path else expected)
    spec = app.openapi()
    assert "/models/{name}/predict" in spec["paths"]
    assert "/models/{name}/versions/{version}/predict" in spec["paths"]


def test_a_dependency_override_takes_effect_through_either_door(
    app: FastAPI, served: TestClient, fast_path: bool, solved: list[object]
) -> None:
    """The default model, overridden to always lease the ``stable`` alias (version 1)."""
    leased: list[str] = []

    async def stable_model(
        name: str, registry: deps.RegistryDep, request: Request
    ) -> AsyncIterator[LoadedModel]:
        with registry.lease(name, "stable") as model:
            leased.append(model.version)
            request.state.served = (model.name, model.version)
            yield model

    plain = served.post("/models/lin/predict", json=BODY)
    assert plain.headers["x-model-version"] == "2"
    app.dependency_overrides[deps.get_default_model] = stable_model
    try:
        overridden = served.post("/models/lin/predict", json=BODY)
    finally:
        app.dependency_overrides.clear()
    assert overridden.status_code == 200
    assert overridden.headers["x-model-version"] == "1"
    assert overridden.json()["outputs"] != plain.json()["outputs"]
    assert leased == ["1"]
    # NOTE: the fast door calls the override itself; FastAPI's solver never sees it.
    assert (predict.predict in solved) is not fast_path
    assert served.post("/models/lin/predict", json=BODY).headers["x-model-version"] == "2"
    registry: ModelRegistry = served.app_state["registry"]
    assert sum(s.model.leases for s in _slots(registry) if s.model is not None) == 0


def _slots(registry: ModelRegistry) -> Iterator[Any]:
    for entry in registry.table.values():
        yield from entry.versions.values()


def test_an_override_the_fast_path_cannot_call_goes_to_fastapi_and_still_applies(
    app: FastAPI,
    served: TestClient,
    fast_path: bool,
    solved: list[object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync dependency (FastAPI runs it in a thread): the fast path hands over."""

    def fixed_body() -> bytes:
        return b'{"inputs": [1, 1, 1, 1]}'

    app.dependency_overrides[deps.read_body] = fixed_body
    try:
        answer = served.post("/models/lin/predict", json=BODY)
    finally:
        app.dependency_overrides.clear()
    assert answer.status_code == 200
    ones = served.post("/models/lin/predict", json={"inputs": [1, 1, 1, 1]})
    assert answer.json() == ones.json()
    assert predict.predict in solved
    if fast_path:
        assert "served through FastAPI, not the fast path" in caplog.text


def test_a_router_included_after_create_app_is_served_and_its_predict_routes_are_fronted(
    app: FastAPI, fast_path: bool, solved: list[object]
) -> None:
    extra = APIRouter()

    @extra.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @extra.get("/broken")
    async def broken() -> dict[str, str]:
        raise RuntimeError("a bug in an added route")

    extra.add_api_route("/alias/{name}/predict", predict.predict, methods=["POST"])
    app.include_router(extra, prefix="/extra")
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/extra/hello").json() == {"hello": "world"}
        via_alias = client.post("/extra/alias/lin/predict", json=BODY)
        assert via_alias.status_code == 200
        assert via_alias.json() == client.post("/models/lin/predict", json=BODY).json()
        assert (predict.predict in solved) is not fast_path
        metrics = client.get("/metrics").text
        assert 'registry_requests_total{model="lin",status="200",version="2"} 2.0' in metrics
        failed = client.get("/extra/broken", headers={"x-request-id": "added-1"})
    assert failed.status_code == 500
    assert failed.headers["x-request-id"] == "added-1"
    assert failed.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert "/extra/alias/{name}/predict" in app.openapi()["paths"]


@pytest.mark.parametrize("lifespan", ["the registry's", "its own, around the registry's"])
def test_mounted_in_another_app_that_runs_its_lifespan_it_serves_through_either_door(
    app: FastAPI, settings: Settings, lifespan: str, fast_path: bool, solved: list[object]
) -> None:
    """Starlette never runs a mounted app's lifespan: the parent runs it (docs/operations)."""
    if lifespan == "the registry's":
        parent = FastAPI(lifespan=app.router.lifespan_context)
    else:

        @asynccontextmanager
        async def own(parent: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
            async with app.router.lifespan_context(parent) as state:
                yield {**(state or {}), "parent": "ready"}

        parent = FastAPI(lifespan=own)

    @parent.get("/hello")
    async def hello() -> str:
        return "hi"

    parent.mount("/ml", app)
    with TestClient(parent) as client:
        wait_ready(client, path="/ml/readyz")
        answer = client.post("/ml/models/lin/predict", json=BODY)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"]
        assert client.get("/hello").json() == "hi"
        assert "/models/{name}/predict" in client.get("/ml/openapi.json").json()["paths"]
        # NOTE: errors keep each protocol's shape below the prefix: V2's is a bare message
        v2 = client.post("/ml/v2/models/nope/infer", json={"inputs": []})
        assert v2.status_code == 404
        assert isinstance(v2.json()["error"], str), v2.text
        native = client.post("/ml/models/nope/predict", json=BODY)
        assert native.json()["error"]["code"] == "model_not_found"
    assert (predict.predict in solved) is not fast_path
    with TestClient(create_app(settings)) as alone:
        wait_ready(alone)
        assert answer.json() == alone.post("/models/lin/predict", json=BODY).json()


def test_create_app_leaves_logging_alone_once_configured(settings: Settings) -> None:
    """A test runner (or ``registry serve``) configured it: nothing is replaced."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    create_app(settings)
    assert root.handlers == handlers


def test_settings_come_from_the_environment_without_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``uvicorn registry.app:create_app --factory`` calls."""
    monkeypatch.setenv("REGISTRY_MANIFEST", str(tmp_path / "elsewhere.yaml"))
    monkeypatch.setenv("REGISTRY_FAST_PATH", "false")
    app = create_app()
    layers: list[object] = [m.cls for m in app.user_middleware]
    assert layers == [Observe, BodySizeLimit]
