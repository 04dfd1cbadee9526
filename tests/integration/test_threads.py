"""Torch threads in a real ``registry serve``: a lone pass runs on ``REGISTRY_TORCH_THREADS``
while its version's thread holds the process's permit, and on one thread while another
version's does; a holder that goes idle hands the permit on (``registry.threads``)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from registry.cores import available_cores
from registry.threads import WIDE_EVIDENCE
from tests.factories import FEATURES, echo_model, write_manifest
from tests.integration.server import serving

pytestmark = pytest.mark.integration

THREADS = available_cores() + 1
"""Neither one (the loaders') nor the core count; above the cores, so the process has one
permit on any machine."""


def threads_of(http: httpx.Client, name: str) -> int:
    answer = http.post(f"/models/{name}/predict", json={"inputs": [[1.0] * FEATURES]})
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()["outputs"]
    return int(row[0])


def test_one_version_at_a_time_runs_on_the_configured_threads(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    one = echo_model(weights, "one", "ReportsThreads")
    two = echo_model(weights, "two", "ReportsThreads")
    manifest = write_manifest(tmp_path, [one | {"warmup": True}, two | {"instances": 2}])
    env = {"REGISTRY_TORCH_THREADS": str(THREADS), "REGISTRY_WEIGHTS_DIR": str(weights)}
    with serving(tmp_path, ["--manifest", str(manifest)], env) as server, server.client() as http:
        # NOTE: one thread until the thread's passes have shown they are long
        first = [1] * WIDE_EVIDENCE
        assert [threads_of(http, "one") for _ in range(WIDE_EVIDENCE + 2)] == first + [THREADS] * 2
        # its passes long, but "one" holds the permit: still one
        assert [threads_of(http, "two") for _ in range(WIDE_EVIDENCE + 1)] == [*first, 1]
        # NOTE: "one" idles while "two" wants it: "one" hands it on within half a second
        deadline = time.monotonic() + 30
        while threads_of(http, "two") != THREADS:
            assert time.monotonic() < deadline, "the permit was never handed on"
            time.sleep(0.05)
        assert threads_of(http, "two") == THREADS
        assert [threads_of(http, "one") for _ in range(WIDE_EVIDENCE + 1)] == [*first, 1]
