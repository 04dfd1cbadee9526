"""Torch threads in a real ``registry serve``: every lone pass runs on
``REGISTRY_TORCH_THREADS``, with one instance or several, whatever the loader threads
(one torch thread each) set before the versions started."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import FEATURES, echo_model, write_manifest
from tests.integration.server import serving

pytestmark = pytest.mark.integration

THREADS = 3  # NOTE: neither one (the loaders') nor, on a small machine, the core count


def test_lone_passes_run_on_the_configured_threads(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    one = echo_model(weights, "one", "ReportsThreads")
    two = echo_model(weights, "two", "ReportsThreads")
    manifest = write_manifest(tmp_path, [one | {"warmup": True}, two | {"instances": 2}])
    env = {"REGISTRY_TORCH_THREADS": str(THREADS), "REGISTRY_WEIGHTS_DIR": str(weights)}
    with serving(tmp_path, ["--manifest", str(manifest)], env) as server, server.client() as http:
        for name in ("one", "two", "one", "two", "two", "two"):
            answer = http.post(f"/models/{name}/predict", json={"inputs": [[1.0] * FEATURES]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == [[float(THREADS)]], name
