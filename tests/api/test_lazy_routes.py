"""Lazy versions through both doors (fast path and FastAPI routing): a request loads them,
``/models`` and the metrics tell the state, the budget and the evictions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from registry.app import create_app
from tests.factories import FEATURES, LIN_INPUT, affine_model, affine_outputs, write_manifest
from tests.support import make_settings, wait_ready

AFFINE_BYTES = (FEATURES * 3 + 3) * 4


@pytest.fixture
def lazy_client(tmp_path: Path, fast_path: bool) -> Iterator[TestClient]:
    """Three lazy ``Affine`` models under a budget that holds two of them."""
    weights = tmp_path / "weights"
    write_manifest(
        tmp_path, [affine_model(weights, f"m{i}", ("1",), load="lazy") for i in range(3)]
    )
    settings = make_settings(tmp_path, memory_budget_bytes=2 * AFFINE_BYTES, fast_path=fast_path)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def states(client: TestClient) -> dict[str, str]:
    return {
        f"{model['name']}:{version['version']}": version["state"]
        for model in client.get("/models").json()["models"]
        for version in model["versions"]
    }


def test_requests_load_lazy_versions_and_evict_the_idlest(lazy_client: TestClient) -> None:
    assert set(states(lazy_client).values()) == {"unloaded"}
    expected = affine_outputs([LIN_INPUT], 1)[0]

    for name in ("m0", "m1", "m2"):
        native = lazy_client.post(f"/models/{name}/predict", json={"inputs": LIN_INPUT})
        assert native.status_code == 200, native.text
        np.testing.assert_allclose(native.json()["outputs"], expected, rtol=1e-6)
    v2 = lazy_client.post(
        "/v2/models/m0/infer",
        json={
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": LIN_INPUT}]
        },
    )

    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], expected, rtol=1e-6)
    # NOTE: m0 was evicted for m2, then loaded again for the V2 call, evicting m1.
    assert states(lazy_client) == {"m0:1": "ready", "m1:1": "unloaded", "m2:1": "ready"}
    listing = lazy_client.get("/models/m1").json()["versions"][0]
    assert listing["last_eviction"] == "memory_budget"
    assert listing["load"] == "lazy"
    metrics = lazy_client.get("/metrics").text
    assert f'registry_memory_charged_bytes{{device="cpu"}} {2 * AFFINE_BYTES}.0' in metrics
    assert f'registry_memory_budget_bytes{{device="cpu"}} {2 * AFFINE_BYTES}.0' in metrics
    assert 'registry_evictions_total{model="m0",reason="memory_budget"} 1.0' in metrics
    assert 'registry_evictions_total{model="m1",reason="memory_budget"} 1.0' in metrics
    assert 'registry_version_state{model="m1",state="unloaded",version="1"} 1.0' in metrics


def test_a_lazy_version_is_not_ready_until_asked_for(lazy_client: TestClient) -> None:
    before = lazy_client.get("/v2/models/m0/ready")
    lazy_client.post("/models/m0/predict", json={"inputs": LIN_INPUT})
    after = lazy_client.get("/v2/models/m0/ready")

    assert before.status_code == 503
    assert "its next request loads it" in before.json()["error"]
    assert after.status_code == 200
    assert lazy_client.get("/readyz").status_code == 200  # NOTE: lazy versions never hold it
