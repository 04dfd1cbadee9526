"""``deploy/kserve`` run outside a cluster: the Job's command seeds a model repository, the
predictor pod's command serves it, and the README's ``tritonclient`` code gets answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.server import REPOSITORY, Server, free_port
from tests.kserve_pod import KSERVE, MODEL_DIR, documents, predictor_pod

pytestmark = pytest.mark.integration


def seed(repository: Path) -> None:
    """The seed Job's command, with the image's /app and the claim's mount mapped here."""
    container = documents()["Job"]["spec"]["template"]["spec"]["containers"][0]
    command = [
        part.replace("/app/", f"{REPOSITORY}/").replace(MODEL_DIR, str(repository))
        for part in container["command"]
    ]
    repository.mkdir()
    subprocess.run(command, check=True)


def environment(container: dict[str, Any], repository: Path) -> dict[str, str]:
    """The container's env as the kubelet resolves it: values, the CPU limit, and an
    optional Secret that does not exist."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    for variable in container["env"]:
        source = variable.get("valueFrom", {})
        if "value" in variable:
            env[variable["name"]] = variable["value"].replace(MODEL_DIR, str(repository))
        elif source.get("resourceFieldRef", {}).get("resource") == "limits.cpu":
            env[variable["name"]] = container["resources"]["limits"]["cpu"]
        else:
            assert source["secretKeyRef"]["optional"] is True
    return env


def readme_client() -> str:
    text = (KSERVE / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    return str(code)


def test_the_predictor_pod_serves_the_seeded_repository_to_the_readme_client(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "models"
    seed(repository)
    (container,) = predictor_pod()["spec"]["containers"]
    args = list(container["args"])
    args[0] = str(Path(sys.executable).parent / args[0])
    http, grpc = free_port(), free_port()
    for flag, value in (("--host", "127.0.0.1"), ("--port", http), ("--grpc-port", grpc)):
        args[args.index(flag) + 1] = str(value)
    log = tmp_path / "pod.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=environment(container, repository),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(process, f"http://127.0.0.1:{http}", log)
    try:
        server.wait_ready()
        client = readme_client()
        client = client.replace("localhost:8080", f"127.0.0.1:{http}")
        client = client.replace("localhost:9000", f"127.0.0.1:{grpc}")
        done = subprocess.run(
            [sys.executable, "-c", client], capture_output=True, text=True, check=False, timeout=60
        )
        assert done.returncode == 0, done.stderr
        scores = dict(line.split() for line in done.stdout.splitlines())
        assert set(scores) == {"http", "grpc"}
        assert float(scores["http"]) == pytest.approx(float(scores["grpc"]), abs=1e-6)
        assert 0.5 < float(scores["http"]) <= 1.0
    finally:
        exit_code = server.stop()
    assert exit_code == 0, server.output()  # NOTE: SIGTERM, as the kubelet sends it
