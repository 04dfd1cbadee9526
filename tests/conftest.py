"""Fixtures every test directory shares; helpers live in ``tests/support.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from registry.app import create_app
from registry.settings import Settings
from tests.factories import affine_model, write_manifest
from tests.support import FatalRecorder, Running, Start, make_settings, running, wait_ready


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    root = tmp_path / "weights"
    root.mkdir()
    return root


@pytest.fixture
def settings(tmp_path: Path, weights: Path) -> Settings:
    write_manifest(
        tmp_path,
        [
            affine_model(
                weights,
                "lin",
                ("1", "2"),
                aliases={"stable": "1"},
                output={"labels": ["a", "b", "c"]},
            )
        ],
    )
    return make_settings(tmp_path)


@pytest.fixture
def fatal() -> FatalRecorder:
    return FatalRecorder()


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-path"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    """Both ways a prediction can be served must keep the same contract."""
    return bool(request.param)


@pytest.fixture
def client(settings: Settings, fatal: FatalRecorder, fast_path: bool) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"fast_path": fast_path}), on_fatal=fatal)
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def small_body_client(tmp_path: Path, weights: Path, fast_path: bool) -> Iterator[TestClient]:
    """``lin`` behind a 200-byte body limit, through either door."""
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",))])
    settings = make_settings(tmp_path, max_body_bytes=200, fast_path=fast_path)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Starts registries that are closed when the test ends, passed or failed."""
    async with AsyncExitStack() as stack:

        async def started(settings: Settings) -> Running:
            return await stack.enter_async_context(running(settings))

        yield started
