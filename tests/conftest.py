from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from registry.app import create_app
from registry.settings import Settings
from tests.factories import affine_model, write_manifest


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


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(client.get("/readyz").json())
        time.sleep(0.02)
