from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def json_outputs(client: TestClient, inputs: np.ndarray) -> np.ndarray:
    body = client.post("/models/lin/predict", json={"inputs": inputs.tolist()}).json()
    return np.array(body["outputs"], dtype=np.float32)


def test_raw_tensor_in_json_out(client: TestClient) -> None:
    response = client.post(
        "/models/lin/predict",
        content=X.tobytes(),
        headers={"content-type": "application/octet-stream", "x-shape": "2,4"},
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"], json_outputs(client, X), rtol=1e-6)
    assert len(response.json()["labels"]) == 2


def test_raw_tensor_in_raw_out(client: TestClient) -> None:
    response = client.post(
        "/models/lin/versions/1/predict",
        content=X[0].tobytes(),
        headers={
            "content-type": "application/octet-stream",
            "x-shape": "4",
            "accept": "application/octet-stream",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-shape"] == "3"
    assert response.headers["x-dtype"] == "float32"
    assert response.headers["x-model-version"] == "1"
    outputs = np.frombuffer(response.content, dtype="<f4")
    expected = client.post("/models/lin/versions/1/predict", json={"inputs": X[0].tolist()})
    np.testing.assert_allclose(outputs, expected.json()["outputs"], rtol=1e-6)


def test_npy_in_npy_out_casts_float64(client: TestClient) -> None:
    response = client.post(
        "/models/lin/predict",
        content=npy(X.astype(np.float64)),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert response.status_code == 200
    outputs = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert outputs.shape == (2, 3)
    np.testing.assert_allclose(outputs, json_outputs(client, X), rtol=1e-6)


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (X.tobytes(), {"content-type": "application/octet-stream"}, 422, "X-Shape"),
        (
            X.tobytes(),
            {"content-type": "application/octet-stream", "x-shape": "3,4"},
            422,
            "is 48 bytes; the body has 32",
        ),
        (
            X.tobytes(),
            {"content-type": "application/octet-stream", "x-shape": "2,x"},
            422,
            "comma-separated integers",
        ),
        (
            X.tobytes(),
            {"content-type": "application/octet-stream", "x-shape": "8"},
            422,
            "expected one instance of shape [4]",
        ),
        (
            npy(np.array(["a", "b", "c", "d"])),
            {"content-type": "application/x-npy"},
            422,
            "does not cast",
        ),
        (b"not npy", {"content-type": "application/x-npy"}, 422, "not a .npy array"),
        (b"<xml/>", {"content-type": "application/xml"}, 415, "cannot read 'application/xml'"),
    ],
)
def test_bad_binary_input(
    client: TestClient, content: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    response = client.post("/models/lin/predict", content=content, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]
    assert client.post("/models/lin/predict", json={"inputs": X.tolist()}).status_code == 200


def test_accept_with_q_values_picks_the_preferred_form(client: TestClient) -> None:
    response = client.post(
        "/models/lin/predict",
        json={"inputs": [0.5, -1.0, 2.0, 0.25]},
        headers={"accept": "application/json;q=0.1, application/x-npy"},
    )
    assert response.headers["content-type"] == "application/x-npy"
    assert np.load(io.BytesIO(response.content)).shape == (3,)
