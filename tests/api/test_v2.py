from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from fastapi.testclient import TestClient

from registry.app import create_app
from tests.factories import affine_model, echo_model, write_manifest
from tests.support import make_settings, wait_ready

X = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]]


def infer_body(data: object, shape: list[int], datatype: str = "FP32") -> dict[str, object]:
    return {
        "id": "r-1",
        "inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}],
    }


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2").json()["name"] == "registry"
    # NOTE: what tritonclient-based tools check before using an extension
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_repository"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    metadata = client.get("/v2/models/lin").json()
    assert metadata["name"] == "lin"
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get("/v2/models/lin/versions/stable/ready").json() == {
        "name": "lin",
        "ready": True,
    }


def test_infer_matches_the_native_route(client: TestClient) -> None:
    native = client.post("/models/lin/versions/1/predict", json={"inputs": X}).json()
    flat = [value for row in X for value in row]
    response = client.post("/v2/models/lin/versions/stable/infer", json=infer_body(flat, [2, 4]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("lin", "1", "r-1")
    (output,) = body["outputs"]
    assert output["shape"] == [2, 3]
    assert output["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(output["data"]).reshape(2, 3), native["outputs"], rtol=1e-6)


def test_errors_follow_the_protocol(client: TestClient) -> None:
    missing = client.post("/v2/models/ghost/infer", json=infer_body(X[0], [4]))
    assert missing.status_code == 404
    assert isinstance(missing.json()["error"], str)
    wrong_type = client.post("/v2/models/lin/infer", json=infer_body(X[0], [4], "INT64"))
    assert wrong_type.status_code == 422
    assert "takes FP32" in wrong_type.json()["error"]
    wrong_shape = client.post("/v2/models/lin/infer", json=infer_body(X[0], [2, 2]))
    assert wrong_shape.status_code == 422
    bad_data = client.post("/v2/models/lin/infer", json=infer_body([1, 2, 3], [4]))
    assert bad_data.status_code == 422
    # NOTE: binary tensors after the JSON, without the header that says where it ends
    head = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [4], "datatype": "FP32",
                     "parameters": {"binary_data_size": 16}}]}
    )  # fmt: skip
    headerless = client.post(
        "/v2/models/lin/infer",
        content=head + np.asarray(X[0], np.float32).tobytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert headerless.status_code == 400
    assert "send Inference-Header-Content-Length" in headerless.json()["error"]
    not_json = client.post("/v2/models/lin/infer", content=b"nonsense")
    assert "Inference-Header-Content-Length" not in not_json.json()["error"]
    assert client.post("/v2/models/lin/infer", json=infer_body(X[0], [4])).status_code == 200


def test_v2_inferences_are_counted_like_predictions(client: TestClient) -> None:
    client.post("/v2/models/lin/versions/1/infer", json=infer_body(X[0], [4]))
    metrics = client.get("/metrics").text
    assert 'registry_requests_total{model="lin",status="200",version="1"} 1.0' in metrics


def test_a_body_over_the_limit_is_a_protocol_error(tmp_path: Path, weights: Path) -> None:
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",))])
    with TestClient(create_app(make_settings(tmp_path, max_body_bytes=100))) as client:
        wait_ready(client)
        response = client.post("/v2/models/lin/infer", json=infer_body([0.0] * 64, [16, 4]))
        native = client.post("/models/lin/predict", json={"inputs": [[0.0] * 4] * 16})
    assert response.status_code == 413
    assert "exceeds 100 bytes" in response.json()["error"]
    assert native.status_code == 413
    assert native.json()["error"]["code"] == "payload_too_large"


def test_output_metadata_is_what_a_forward_pass_showed(tmp_path: Path, weights: Path) -> None:
    """Recorded at warm-up, or at the first answer when warm-up is off: never guessed."""
    counts = echo_model(weights, "counts", "Tripwire") | {"input": {"shape": [2], "dtype": "int64"}}
    cold = echo_model(weights, "cold", "Tripwire") | {"input": {"shape": [3]}, "warmup": False}
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",)), counts, cold])
    with TestClient(create_app(make_settings(tmp_path))) as client:
        wait_ready(client)
        outputs = {
            name: client.get(f"/v2/models/{name}").json()["outputs"]
            for name in ("lin", "counts", "cold")
        }
        client.post("/v2/models/cold/infer", json=infer_body([1.0, 2.0, 3.0], [3]))
        after = client.get("/v2/models/cold").json()["outputs"]
    assert outputs["lin"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    assert outputs["counts"] == [{"name": "output", "datatype": "INT64", "shape": [-1, 2]}]
    assert outputs["cold"] == []
    assert after == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
