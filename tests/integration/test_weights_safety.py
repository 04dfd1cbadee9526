"""A real ``registry serve`` given every crafted weight file: none runs, the rest serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import affine_model, model_entry, write_manifest
from tests.hostile_weights import HOSTILE_FILES, hostile_version
from tests.integration.server import REPOSITORY, serving

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer t"}
X = {"inputs": [0.5, -1.0, 2.0, 0.25]}


def test_serve_and_reload_never_run_a_crafted_file(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    marker = tmp_path / "marker"
    good = affine_model(weights, "lin", ("1",))
    hostile = [
        model_entry(name, [hostile_version(weights, name, marker)]) for name in HOSTILE_FILES
    ]
    manifest = write_manifest(tmp_path, [good, *hostile])
    env = {"REGISTRY_STRICT_STARTUP": "false", "REGISTRY_ADMIN_TOKEN": "t"}
    with serving(tmp_path, ["--manifest", str(manifest)], env) as server, server.client() as client:
        assert client.post("/models/lin/predict", json=X).status_code == 200
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        for name in HOSTILE_FILES:
            (version,) = models[name]["versions"]
            assert version["state"] == "failed", version
            assert str(tmp_path) not in version["error"]
            refused = client.post(f"/models/{name}/predict", json=X)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "model_unavailable"

        # a reload retries every failed version: refused as a whole, the good model serves on
        reload = client.post("/admin/reload", headers=AUTH)
        assert reload.status_code == 422, reload.text
        assert reload.json()["error"]["code"] == "reload_failed"
        assert client.post("/models/lin/predict", json=X).status_code == 200
    assert not marker.exists()


def test_strict_start_up_refuses_a_crafted_file_without_running_it(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    marker = tmp_path / "marker"
    name = "exported-pickled-weight"
    manifest = write_manifest(
        tmp_path, [model_entry(name, [hostile_version(weights, name, marker)])]
    )
    process = subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--manifest", str(manifest), "--port", "0"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
    )
    assert process.returncode == 1, process.stderr
    assert "stored pickled, which is never loaded" in process.stderr + process.stdout
    assert not marker.exists()
