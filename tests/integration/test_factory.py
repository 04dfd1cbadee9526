"""``uvicorn registry.app:create_app --factory``: the same app from the environment, and
the logging settings apply as under ``registry serve``, uvicorn's own lines included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.factories import LIN_INPUT, affine_model, write_manifest
from tests.integration.server import REPOSITORY, Server, free_port

pytestmark = pytest.mark.integration


@contextmanager
def uvicorn_factory(
    directory: Path, env: dict[str, str], factory: str = "registry.app:create_app"
) -> Iterator[Server]:
    write_manifest(directory, [affine_model(directory / "weights", "lin", ("1",))])
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    environment |= {
        "REGISTRY_MANIFEST": str(directory / "models.yaml"),
        "REGISTRY_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = directory / "uvicorn.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPOSITORY, env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_uvicorn_factory_builds_the_same_app_from_the_environment(tmp_path: Path) -> None:
    with uvicorn_factory(tmp_path, {}) as server, server.client() as client:
        answer = client.post("/models/lin/predict", json={"inputs": LIN_INPUT})
    assert answer.status_code == 200
    assert answer.headers["x-model-version"] == "1"


def test_an_exception_past_every_handler_costs_one_request_and_no_more(tmp_path: Path) -> None:
    factory = "tests.failing_handler_app:create_app"
    with uvicorn_factory(tmp_path, {}, factory) as server, server.client() as client:
        failed = client.get("/raises")
        assert failed.status_code == 500
        answer = client.post("/models/lin/predict", json={"inputs": LIN_INPUT})
        assert answer.status_code == 200
        assert client.get("/raises").status_code == 500
    assert "a bug in the handler for Exception" in server.output()


def test_json_log_format_reaches_every_line_uvicorns_included(tmp_path: Path) -> None:
    env = {"REGISTRY_LOG_FORMAT": "json", "REGISTRY_ACCESS_LOG": "true"}
    with uvicorn_factory(tmp_path, env) as server, server.client() as client:
        answer = client.post(
            "/models/lin/predict", json={"inputs": LIN_INPUT}, headers={"x-request-id": "f-1"}
        )
        assert answer.status_code == 200
    lines = [line for line in server.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # NOTE: fails on any line that is not JSON
    assert all(isinstance(record, dict) for record in records)
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "registry.lifespan"} <= loggers
    (access,) = [r for r in records if r["logger"] == "registry.access" and r.get("model")]
    assert access | {"duration_ms": 0} == access | {
        "request_id": "f-1",
        "method": "POST",
        "path": "/models/lin/predict",
        "status": 200,
        "model": "lin",
        "version": "1",
        "duration_ms": 0,
    }
    assert "uvicorn.access" not in loggers  # one access line a request: the registry's


def test_log_level_applies_to_uvicorns_lines_too(tmp_path: Path) -> None:
    env = {"REGISTRY_LOG_LEVEL": "warning"}
    with uvicorn_factory(tmp_path, env) as server, server.client() as client:
        assert client.get("/readyz").status_code == 200
    output = server.output()
    assert "Application startup complete" not in output
    assert " INFO " not in output
