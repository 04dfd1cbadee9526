from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from registry.app import create_app
from registry.core import ModelRegistry
from tests.factories import (
    TRIPWIRE,
    affine_model,
    affine_outputs,
    echo_model,
    model_entry,
    write_manifest,
)
from tests.support import FatalRecorder, make_settings, wait_ready

X = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]]


def test_single_instance_gets_one_output_and_label(client: TestClient) -> None:
    response = client.post("/models/lin/predict", json={"inputs": X[0]})
    assert response.status_code == 200
    body = response.json()
    expected = affine_outputs(X[:1], seed=2)[0]
    np.testing.assert_allclose(body["outputs"], expected, rtol=1e-6)
    assert body["labels"] == "abc"[int(expected.argmax())]
    assert (body["model"], body["version"]) == ("lin", "2")
    assert response.headers["x-model-name"] == "lin"
    assert response.headers["x-model-version"] == "2"


def test_batch_gets_lists(client: TestClient) -> None:
    body = client.post("/models/lin/predict", json={"inputs": X}).json()
    expected = affine_outputs(X, seed=2)
    np.testing.assert_allclose(body["outputs"], expected, rtol=1e-6)
    assert body["labels"] == ["abc"[i] for i in expected.argmax(axis=1)]


@pytest.mark.parametrize(("route", "version"), [("stable", "1"), ("1", "1"), ("2", "2")])
def test_versioned_route_answers_the_concrete_version(
    client: TestClient, route: str, version: str
) -> None:
    response = client.post(f"/models/lin/versions/{route}/predict", json={"inputs": X})
    assert response.status_code == 200
    assert response.json()["version"] == version
    assert response.headers["x-model-version"] == version
    np.testing.assert_allclose(
        response.json()["outputs"], affine_outputs(X, int(version)), rtol=1e-6
    )


def test_unknown_model_and_version_list_what_exists(client: TestClient) -> None:
    response = client.post("/models/nope/predict", json={"inputs": X})
    assert response.status_code == 404
    assert response.json()["error"] | {"message": ""} == {
        "code": "model_not_found",
        "message": "",
        "available": ["lin"],
    }
    response = client.post("/models/lin/versions/9/predict", json={"inputs": X})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "version_not_found"
    assert error["available"] == ["1", "2"]
    assert error["aliases"] == {"stable": "1"}


BAD_BODIES = [
    pytest.param(
        b'{"inputs": [1, 2]}',
        422,
        "invalid_input",
        "expected one instance of shape [4]",
        id="wrong-shape",
    ),
    pytest.param(
        b'{"inputs": [[1, 2, 3, 4], [1, 2]]}', 422, "invalid_input", "ragged", id="ragged"
    ),
    pytest.param(b'{"inputs": []}', 422, "invalid_input", "empty", id="empty"),
    pytest.param(b'{"inputs": [[]]}', 422, "invalid_input", "empty", id="empty-batch-row"),
    pytest.param(
        b'{"inputs": ["a", "b", "c", "d"]}', 422, "invalid_input", "float32", id="strings"
    ),
    pytest.param(b'{"inputs": {"x": 1}}', 422, "invalid_input", "unknown input 'x'", id="object"),
    pytest.param(b'{"inputs": null}', 422, "invalid_input", "nested lists", id="null"),
    pytest.param(
        b'{"instances": [[1, 2, 3, 4]]}',
        422,
        "invalid_input",
        "'inputs' field",
        id="missing-inputs",
    ),
    pytest.param(b"[1, 2, 3, 4]", 422, "invalid_input", "JSON object", id="not-an-object"),
    pytest.param(b'{"inputs": [1, 2,', 400, "invalid_json", "not valid JSON", id="truncated"),
    pytest.param(b"", 400, "invalid_json", "empty", id="no-body"),
    pytest.param(b"\xff\xfe", 400, "invalid_json", "not valid JSON", id="not-utf8"),
]


@pytest.mark.parametrize(("body", "status", "code", "message"), BAD_BODIES)
def test_bad_input_gets_its_error_and_the_next_request_succeeds(
    client: TestClient, body: bytes, status: int, code: str, message: str
) -> None:
    response = client.post(
        "/models/lin/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]
    if code == "invalid_input":
        assert error["expected_shape"] == [4]
    assert client.post("/models/lin/predict", json={"inputs": X}).status_code == 200


def test_body_over_the_limit_is_413_declared_or_chunked(small_body_client: TestClient) -> None:
    big = b'{"inputs": [' + b"1.0, " * 100 + b"1.0]}"
    declared = small_body_client.post(
        "/models/lin/predict", content=big, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 50):
            yield big[start : start + 50]

    chunked = small_body_client.post("/models/lin/predict", content=chunks())
    assert chunked.status_code == 413
    assert chunked.json()["error"]["max_body_bytes"] == 200
    ok = small_body_client.post("/models/lin/predict", json={"inputs": [1, 2, 3, 4]})
    assert ok.status_code == 200


@pytest.fixture
def faulty_client(tmp_path: Path, weights: Path, fast_path: bool) -> Iterator[TestClient]:
    tripwire = echo_model(weights, "trip", "Tripwire")
    sleepy = echo_model(weights, "sleepy", "Sleepy", seconds=0.5)
    sleepy["warmup"] = False
    settings = make_settings(tmp_path, request_timeout_s=0.2, fast_path=fast_path)
    write_manifest(tmp_path, [tripwire, sleepy])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def test_a_model_that_raises_is_500_and_the_process_keeps_serving(
    faulty_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = faulty_client.post(
        "/models/trip/predict",
        json={"inputs": [1, TRIPWIRE, 0, 0]},
        headers={"x-request-id": "req-42"},
    )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "model_failed"
    assert "tripwire hit" not in response.text  # no internals leak to clients
    assert "tripwire hit" in caplog.text  # ... but the log has the traceback
    assert any(getattr(r, "request_id", None) == "req-42" for r in caplog.records)
    ok = faulty_client.post("/models/trip/predict", json={"inputs": [1, 2, 3, 4]})
    assert ok.status_code == 200
    assert ok.json()["outputs"] == [1, 2, 3, 4]


def test_inference_past_the_timeout_is_504(faulty_client: TestClient) -> None:
    response = faulty_client.post("/models/sleepy/predict", json={"inputs": [1, 2, 3, 4]})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "inference_timeout"


def test_metadata_routes(client: TestClient) -> None:
    models = client.get("/models").json()["models"]
    (lin,) = models
    assert lin["name"] == "lin"
    assert lin["state"] == "ready"
    assert lin["default_version"] == "2"
    assert lin["input"] == {"name": "input", "shape": [4], "dtype": "float32"}
    assert lin["inputs"] == [lin["input"]]
    assert lin["outputs"] == [
        {"name": "output", "shape": None, "dtype": None, "labels": lin["labels"]}
    ]
    assert lin["handler"] is None
    assert lin["instances"] == 1
    assert [v["version"] for v in lin["versions"]] == ["1", "2"]
    assert all(v["state"] == "ready" and v["memory_bytes"] == 60 for v in lin["versions"])
    assert all(v["load_ms"] > 0 for v in lin["versions"])
    assert client.get("/models/lin").json() == lin
    assert client.get("/models/nope").status_code == 404


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": 1, "versions": 2}
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/models/{name}/predict"]["post"]
    body_schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert "inputs" in body_schema["properties"]
    assert "200" in predict["responses"]
    assert "422" in predict["responses"]
    assert "version" not in {p["name"] for p in predict.get("parameters", [])} - {"name"}


def test_unknown_routes_and_methods_use_the_envelope(client: TestClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong_method = client.get("/models/lin/predict")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_while_loading_healthz_is_up_readyz_and_predict_are_503(
    tmp_path: Path, weights: Path, fast_path: bool
) -> None:
    write_manifest(tmp_path, [echo_model(weights, "slow", "SlowToBuild", seconds=1.5)])
    with TestClient(create_app(make_settings(tmp_path, fast_path=fast_path))) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["pending"] == ["slow:1"]
        predict = client.post("/models/slow/predict", json={"inputs": [1, 2, 3, 4]})
        assert predict.status_code == 503
        assert predict.json()["error"]["code"] == "model_loading"
        assert int(predict.headers["retry-after"]) >= 1
        assert client.get("/models/slow").json()["versions"][0]["state"] == "loading"
        wait_ready(client)
        assert client.post("/models/slow/predict", json={"inputs": [1, 2, 3, 4]}).status_code == 200


def test_strict_startup_failure_calls_fatal_lenient_serves_the_rest(
    tmp_path: Path, weights: Path, fatal: FatalRecorder
) -> None:
    broken = model_entry(
        "broken", [{"version": "1", "format": "torchscript", "path": "missing.pt"}]
    )
    write_manifest(tmp_path, [affine_model(weights, "good", ("1",)), broken])
    with TestClient(create_app(make_settings(tmp_path), on_fatal=fatal)) as client:
        assert fatal.called.wait(30), "the strict start-up failure never called fatal"
        assert fatal.calls == 1
        readiness = client.get("/readyz").json()["error"]
        assert readiness["failed"] == ["broken:1"]
        assert readiness["pending"] == []  # a failed version is not still loading

    lenient = make_settings(tmp_path, strict_startup=False)
    with TestClient(create_app(lenient, on_fatal=fatal)) as client:
        wait_ready(client)
        assert fatal.calls == 1
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["broken"]["state"] == "failed"
        assert "no weight file" in models["broken"]["versions"][0]["error"]
        broken_predict = client.post("/models/broken/predict", json={"inputs": [1, 2, 3, 4]})
        assert broken_predict.status_code == 503
        assert broken_predict.json()["error"]["code"] == "model_unavailable"
        assert client.post("/models/good/predict", json={"inputs": [1, 2, 3, 4]}).status_code == 200


def test_after_the_lifespan_no_model_object_is_reachable(
    settings: object, fatal: FatalRecorder
) -> None:
    refs: list[weakref.ref[object]] = []
    with TestClient(create_app(settings, on_fatal=fatal)) as client:  # type: ignore[arg-type]
        wait_ready(client)
        assert client.post("/models/lin/predict", json={"inputs": X}).status_code == 200
        registry = client.app_state["registry"]
        assert isinstance(registry, ModelRegistry)
        for entry in registry.table.values():
            for slot in entry.versions.values():
                assert slot.model is not None
                refs += [weakref.ref(slot.model), weakref.ref(slot.model.module)]
        del registry, entry, slot
    gc.collect()
    assert len(refs) == 4
    assert [ref() for ref in refs] == [None] * 4


def test_answers_declare_their_length_through_both_doors(client: TestClient) -> None:
    """A declared length, never chunked framing, whichever door answered."""
    response = client.post("/models/lin/predict", json={"inputs": [0.5, -1.0, 2.0, 0.25]})
    assert response.headers["content-length"] == str(len(response.content))
