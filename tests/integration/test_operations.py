"""What an operator sees: the container's command, JSON logs, metrics over real HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from registry.examples.data import digits_split
from tests.factories import affine_model, write_manifest
from tests.integration.server import REPOSITORY, Server, free_port, serving

pytestmark = pytest.mark.integration


def dockerfile_cmd_and_env() -> tuple[list[str], dict[str, str]]:
    text = re.sub(r"\\\n", " ", (REPOSITORY / "Dockerfile").read_text(encoding="utf-8"))
    final = text[text.rindex("\nFROM ") :]
    (cmd,) = re.findall(r"^CMD (\[.*\])$", final, re.MULTILINE)
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.*)$", final, re.MULTILINE):
        env |= dict(pair.split("=", 1) for pair in line.split())
    return json.loads(cmd), env


def compose_environment() -> dict[str, str]:
    """The service's environment with ``${NAME:-default}`` resolved to its default."""
    document = yaml.safe_load((REPOSITORY / "docker-compose.yml").read_text(encoding="utf-8"))
    environment: dict[str, Any] = document["services"]["registry"]["environment"]
    return {
        key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in environment.items()
    }


def test_the_container_command_becomes_ready_and_predicts(tmp_path: Path) -> None:
    """The Dockerfile's CMD with the image's and compose's environment, outside a container.

    Container paths map to the repository (what compose mounts there); the address maps to
    a free loopback port, as `ports:` would publish it.
    """
    cmd, image_env = dockerfile_cmd_and_env()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env |= {k: v for k, v in image_env.items() if k.startswith(("REGISTRY_", "PYTHON"))}
    env |= compose_environment()
    mounts = {
        "/app/models.yaml": REPOSITORY / "models.yaml",
        "/app/weights": REPOSITORY / "weights",
    }
    for key, value in env.items():
        if value in mounts:
            env[key] = str(mounts[value])
    port = free_port()
    command = [str(Path(sys.executable).parent / cmd[0]), *cmd[1:]]
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    log = tmp_path / "container.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_ready()
        split = digits_split()
        with server.client() as client:
            answer = client.post(
                "/models/digits/predict", json={"inputs": split.x_test[0].tolist()}
            )
            admin = client.post("/admin/reload")
        assert answer.status_code == 200
        assert answer.json()["labels"] == str(split.y_test[0])
        assert admin.status_code == 403  # compose's empty token default leaves admin off
    finally:
        assert server.stop() == 0
    for line in server.output().splitlines():
        json.loads(line)  # compose sets REGISTRY_LOG_FORMAT=json


def test_json_logs_parse_line_by_line_and_carry_the_request_id(tmp_path: Path) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",))])
    env = {"REGISTRY_LOG_FORMAT": "json", "REGISTRY_ACCESS_LOG": "true"}
    args = ["--manifest", str(tmp_path / "models.yaml")]
    with serving(tmp_path, args, env) as server, server.client() as client:
        ok = client.post(
            "/models/lin/predict",
            json={"inputs": [1, 2, 3, 4]},
            headers={"X-Request-ID": "trace-42"},
        )
        missing = client.post(
            "/models/none/predict", json={"inputs": [1]}, headers={"X-Request-ID": "trace-43"}
        )
    assert ok.headers["x-request-id"] == "trace-42"
    assert missing.headers["x-request-id"] == "trace-43"
    records = [json.loads(line) for line in server.output().splitlines()]
    assert {"timestamp", "level", "message", "logger"} <= set(records[0])
    (access,) = [r for r in records if r.get("request_id") == "trace-42"]
    assert access["status"] == 200
    assert (access["model"], access["version"]) == ("lin", "1")
    assert access["duration_ms"] > 0
    assert access["path"] == "/models/lin/predict"
    (unknown,) = [r for r in records if r.get("request_id") == "trace-43"]
    assert unknown["status"] == 404


def test_metrics_over_http_count_exactly_what_was_sent(tmp_path: Path) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1", "2"))])
    with (
        serving(tmp_path, ["--manifest", str(tmp_path / "models.yaml")]) as server,
        server.client() as client,
    ):
        for _ in range(7):
            client.post("/models/lin/predict", json={"inputs": [1, 2, 3, 4]})
        for _ in range(4):
            client.post("/models/lin/versions/1/predict", json={"inputs": [[1, 2, 3, 4]] * 3})
        client.post("/models/lin/predict", json={"inputs": "nope"})
        text = client.get("/metrics").text
    counts = {
        (s.labels["model"], s.labels["version"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "registry_requests_total"
    }
    assert counts == {("lin", "2", "200"): 7, ("lin", "1", "200"): 4, ("lin", "2", "422"): 1}


@pytest.mark.parametrize(
    ("manifest", "lines"),
    [
        (
            "models: [{name: x, input: {shape: [0]}, "
            "versions: [{version: '1', format: torchscript, path: ../a.pt}]}]\n",
            [
                "error: invalid manifest '{path}': x: input.shape[0]: must be greater than",
                "error: invalid manifest '{path}': x: versions[0].path: must be a relative path",
            ],
        ),
        ("models: [\n", ["error: manifest '{path}' is not valid YAML"]),
        (None, ["error: cannot read manifest '{path}'"]),
    ],
    ids=["invalid", "not-yaml", "missing"],
)
def test_serve_with_a_bad_manifest_prints_clear_lines_and_no_traceback(
    tmp_path: Path, manifest: str | None, lines: list[str]
) -> None:
    path = tmp_path / "models.yaml"
    if manifest is not None:
        path.write_text(manifest, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    command = [sys.executable, "-m", "registry", "serve", "--manifest", str(path)]
    command += ["--port", str(free_port())]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    for line in lines:
        assert line.format(path=path) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "Started server" not in done.stderr  # uvicorn never ran
