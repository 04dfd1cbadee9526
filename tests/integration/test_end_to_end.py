"""The repository's own ``models.yaml`` served by a real process, checked against torch."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from registry.examples.data import diabetes_split, digits_split
from registry.loaders import load_version
from registry.manifest import load_manifest
from tests.factories import affine_model, echo_model, model_entry, write_manifest
from tests.integration.conftest import Examples
from tests.integration.server import REPOSITORY, Server, in_flight, serving, start
from tests.support import make_settings, wait_for

pytestmark = pytest.mark.integration

MANIFEST = REPOSITORY / "models.yaml"
FULL_BATCH = 32  # NOTE: every example model's max_batch_size: a request holds at most that


def in_process(name: str, version: str, inputs: np.ndarray) -> np.ndarray:
    """What torch itself answers for ``inputs`` with the same manifest entry."""
    spec = next(m for m in load_manifest(MANIFEST).models if m.name == name)
    model = load_version(
        spec, next(v for v in spec.versions if v.version == version), REPOSITORY / "weights"
    )
    return model.forward_blocking(inputs)


@pytest.fixture(scope="module")
def server(examples: Examples) -> Server:
    return examples.server


@pytest.mark.parametrize(
    ("route", "name", "version", "shape"),
    [
        ("/models/digits/predict", "digits", "2", (64,)),
        ("/models/digits/versions/stable/predict", "digits", "1", (64,)),
        ("/models/digits-cnn/predict", "digits-cnn", "1", (1, 8, 8)),
    ],
)
def test_held_out_digits_over_http_match_torch_and_score(
    server: Server, route: str, name: str, version: str, shape: tuple[int, ...]
) -> None:
    split = digits_split()
    x = split.x_test.reshape(len(split.x_test), *shape)
    expected = in_process(name, version, x)
    with server.client() as client:
        # one instance per request, from 8 threads so the server batches them
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda row: client.post(route, json={"inputs": row.tolist()}), x)
            )
        batch = client.post(route, json={"inputs": x[:FULL_BATCH].tolist()})
    assert all(a.status_code == 200 for a in answers)
    assert {a.headers["x-model-version"] for a in answers} == {version}
    outputs = np.array([a.json()["outputs"] for a in answers], dtype=np.float32)
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-6)
    labels = np.array([int(a.json()["labels"]) for a in answers])
    assert (labels == expected.argmax(axis=1)).all()
    accuracy = float((labels == split.y_test).mean())
    assert accuracy >= 0.9, accuracy
    np.testing.assert_allclose(batch.json()["outputs"], expected[:FULL_BATCH], rtol=1e-4, atol=1e-6)
    assert batch.json()["labels"] == [str(i) for i in expected[:FULL_BATCH].argmax(axis=1)]


def test_bad_requests_in_a_concurrent_mix_fail_alone(server: Server) -> None:
    split = digits_split()
    good = split.x_test[:48]
    expected = in_process("digits", "2", good)
    bodies: list[object] = []
    for row in good:
        bodies += [{"inputs": row.tolist()}, {"inputs": row[:10].tolist()}]
    with server.client() as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: client.post("/models/digits/predict", json=b), bodies))
    assert [a.status_code for a in answers] == [200, 422] * len(good)
    outputs = np.array([a.json()["outputs"] for a in answers[::2]], dtype=np.float32)
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-6)


def test_diabetes_regression_matches_torch_and_its_recorded_score(server: Server) -> None:
    split = diabetes_split()
    expected = in_process("diabetes", "1", split.x_test)
    with server.client() as client:
        bodies = [
            client.post("/models/diabetes/predict", json={"inputs": rows.tolist()}).json()
            for rows in np.array_split(split.x_test, -(-len(split.x_test) // FULL_BATCH))
        ]
    outputs = np.concatenate([np.array(b["outputs"], dtype=np.float32) for b in bodies])
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-4)
    mae = float(np.abs(outputs[:, 0] - split.y_test).mean())
    recorded = json.loads((REPOSITORY / "weights/scores.json").read_text())["diabetes:1"]["mae"]
    assert mae == pytest.approx(recorded, rel=1e-4)
    assert all("labels" not in body for body in bodies)


def test_metadata_and_bad_input_over_http(server: Server) -> None:
    with server.client() as client:
        models = client.get("/models").json()["models"]
        assert {m["name"]: m["state"] for m in models} == {
            "digits": "ready",
            "digits-cnn": "ready",
            "diabetes": "ready",
            "minilm": "ready",
            "similarity": "ready",
            "digits-image": "ready",
        }
        bad = client.post("/models/digits/predict", json={"inputs": [1.0, 2.0]})
        assert bad.status_code == 422
        assert bad.json()["error"]["expected_shape"] == [64]
        assert client.post("/models/digits/predict", content=b"{nope").status_code == 400
        good = client.post("/models/digits/predict", json={"inputs": [0.0] * 64})
        assert good.status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_in_flight_requests_finish_then_exits_zero(
    tmp_path: Path, sig: signal.Signals
) -> None:
    weights = tmp_path / "weights"
    sleepy = echo_model(weights, "sleepy", "Sleepy", seconds=0.5)
    sleepy["warmup"] = False
    sleepy["batching"] = {"max_batch_size": 1}
    write_manifest(tmp_path, [sleepy])
    server = start(tmp_path, ["--manifest", str(tmp_path / "models.yaml")])
    server.wait_ready()
    with server.client() as client, ThreadPoolExecutor(3) as pool:
        pending = [
            pool.submit(client.post, "/models/sleepy/predict", json={"inputs": [i, 0, 0, 0]})
            for i in range(3)
        ]
        # NOTE: one pass running and two queued behind it when the signal comes
        wait_for(lambda: in_flight(client, "sleepy") == 3, "three requests in flight")
        server.process.send_signal(sig)
        responses = [future.result() for future in pending]
        code = server.stop()
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert sorted(r.json()["outputs"][0] for r in responses) == [0, 1, 2]
    assert code == 0, server.output()
    # NOTE: the drain ended with the requests, not at its deadline (uvicorn's words for that)
    assert "timeout graceful shutdown exceeded" not in server.output()
    assert "every model released" in server.output()


def test_strict_startup_exits_non_zero_when_a_model_fails(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    broken = model_entry("broken", [{"version": "1", "format": "torchscript", "path": "gone.pt"}])
    write_manifest(tmp_path, [affine_model(weights, "good", ("1",)), broken])
    server = start(tmp_path, ["--manifest", str(tmp_path / "models.yaml")])
    assert server.process.wait(timeout=60) == 1, server.output()
    assert "failed to load broken:1: no weight file 'gone.pt'" in server.output()
    assert "strict start-up: 1 version(s) failed to load" in server.output()


def test_lenient_startup_serves_the_rest(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    broken = model_entry("broken", [{"version": "1", "format": "torchscript", "path": "gone.pt"}])
    write_manifest(tmp_path, [affine_model(weights, "good", ("1",)), broken])
    args = ["--manifest", str(tmp_path / "models.yaml")]
    with (
        serving(tmp_path, args, {"REGISTRY_STRICT_STARTUP": "false"}) as server,
        server.client() as client,
    ):
        assert client.post("/models/good/predict", json={"inputs": [1, 2, 3, 4]}).status_code == 200
        assert (
            client.post("/models/broken/predict", json={"inputs": [1, 2, 3, 4]}).status_code == 503
        )


def test_invalid_manifest_never_serves(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text("models: [{name: x, versions: []}]\n")
    server = start(tmp_path, ["--manifest", str(tmp_path / "models.yaml")])
    assert server.process.wait(timeout=60) != 0
    assert "invalid manifest" in server.output()


def test_settings_from_the_environment_and_flags(tmp_path: Path) -> None:
    """``--manifest`` beats ``REGISTRY_MANIFEST``; the weights root follows the manifest."""
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "good", ("1",))])
    env = {"REGISTRY_MANIFEST": str(tmp_path / "does-not-exist.yaml")}
    args = ["--manifest", str(tmp_path / "models.yaml")]
    with serving(tmp_path, args, env) as server, server.client() as client:
        assert [m["name"] for m in client.get("/models").json()["models"]] == ["good"]
    assert make_settings(tmp_path).weights_root == (tmp_path / "weights").resolve()
