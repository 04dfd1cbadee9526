"""Handlers, named tensors and text, through the routes and in one shared forward pass."""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from registry.app import create_app
from registry.batching import Tensors
from registry.errors import InvalidInput, ModelFailed
from registry.loaders import load_version
from registry.manifest import load_manifest
from tests.factories import parameterless_version, write_manifest
from tests.handlers import BAD_INPUT, BAD_OUTPUT, CRASH, Picky
from tests.support import make_settings


def version(weights: Path, name: str, architecture: str) -> dict[str, Any]:
    return parameterless_version(weights, name, f"tests.handlers:{architecture}")


def models(weights: Path) -> list[dict[str, Any]]:
    return [
        {
            "name": "picky",
            "input": {"shape": [2]},
            "handler": "tests.handlers:Picky",
            "handler_args": {"scale": 2.0},
            "versions": [version(weights, "picky", "Identity")],
        },
        {
            "name": "lengths",
            "inputs": [{"name": "text", "dtype": "string", "shape": []}],
            "outputs": [{"name": "total", "dtype": "float32", "shape": [1]}],
            "handler": "tests.handlers:Lengths",
            "versions": [version(weights, "lengths", "Summer")],
        },
        {
            "name": "pair",
            "inputs": [{"name": "a", "shape": [2]}, {"name": "b", "shape": [2]}],
            "outputs": [{"name": "sum"}, {"name": "difference"}],
            "versions": [version(weights, "pair", "SumAndDifference")],
        },
        {
            "name": "no-warmup",
            "input": {"shape": [2]},
            "handler": "tests.handlers:NoWarmup",
            "versions": [version(weights, "no-warmup", "Identity")],
        },
        {
            "name": "two-texts",
            "inputs": [{"name": "texts", "dtype": "string", "shape": [2]}],
            "handler": "registry.handlers.text:SentenceEmbedding",
            "versions": [version(weights, "two-texts", "Identity")],
        },
        {
            "name": "labeller",
            "input": {"shape": [4]},
            "outputs": [{"name": "label", "dtype": "string", "shape": []}],
            "handler": "tests.handlers:Labeller",
            "versions": [version(weights, "labeller", "Identity")],
        },
        {
            "name": "columns",
            "input": {"shape": [4]},
            "versions": [version(weights, "columns", "FirstColumns")],
        },
        {
            "name": "two-images",
            "inputs": [{"name": "image", "dtype": "bytes", "shape": [2]}],
            "handler": "registry.handlers.image:ImageTensor",
            "handler_args": {"size": [4, 4], "mode": "L"},
            "versions": [version(weights, "two-images", "Identity")],
        },
        {
            "name": "upright",
            "inputs": [{"name": "image", "dtype": "bytes", "shape": []}],
            "handler": "registry.handlers.image:ImageTensor",
            "handler_args": {"size": [3, 4], "mode": "L", "scale": 1, "exif_orientation": True},
            "versions": [version(weights, "upright", "Identity")],
        },
        {
            "name": "upright-quoted",
            "inputs": [{"name": "image", "dtype": "bytes", "shape": []}],
            "handler": "registry.handlers.image:ImageTensor",
            "handler_args": {"size": [3, 4], "exif_orientation": "false"},
            "versions": [version(weights, "upright-quoted", "Identity")],
        },
        {
            "name": "unsafe",
            "input": {"shape": [2]},
            "handler": "os:system",
            "versions": [version(weights, "unsafe", "Identity")],
        },
    ]


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("handlers")
    write_manifest(root, models(root / "weights"))
    return root


@pytest.fixture(scope="module")
def client(directory: Path) -> Iterator[TestClient]:
    settings = make_settings(directory, weights_dir=directory / "weights", strict_startup=False)
    with TestClient(create_app(settings)) as client:
        # NOTE: not /readyz, which waits for every model: ``unsafe`` is meant to fail.
        assert client.portal is not None
        client.portal.call(client.app_state["repository"].wait_loaded)
        yield client


def predict(client: TestClient, name: str, inputs: object) -> Any:
    return client.post(f"/models/{name}/predict", json={"inputs": inputs})


def test_a_handlers_hooks_and_arguments_shape_the_answer(client: TestClient) -> None:
    answer = predict(client, "picky", [1.0, 2.0])
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [2.0, 4.0]  # NOTE: decode scaled by handler_args


@pytest.mark.parametrize(
    ("value", "status", "code", "fragment"),
    [
        (BAD_INPUT, 422, "invalid_input", f"{BAD_INPUT} is not welcome here"),
        (CRASH, 500, "model_failed", "raised during inference"),
        (BAD_OUTPUT, 500, "model_failed", "raised during inference"),
    ],
)
def test_a_failing_hook_fails_that_request_and_the_next_is_served(
    client: TestClient, value: float, status: int, code: str, fragment: str
) -> None:
    answer = predict(client, "picky", [value, 1.0])
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert fragment in answer.json()["error"]["message"]
    assert predict(client, "picky", [1.0, 1.0]).json()["outputs"] == [2.0, 2.0]


def test_in_one_pass_each_failure_stays_with_its_own_request(directory: Path) -> None:
    (spec, *_) = load_manifest(directory / "models.yaml").models
    model = load_version(spec, spec.versions[0], directory / "weights")
    assert isinstance(model.handler, Picky)
    requests: list[Tensors] = [
        {"input": np.array([[v, 0.0]], dtype=np.float32)}
        for v in (1.0, BAD_INPUT, CRASH, BAD_OUTPUT, 3.0)
    ]
    answers = model.run_blocking(requests)
    good, refused, crashed, unencodable, other = answers
    assert isinstance(refused, InvalidInput)
    assert isinstance(crashed, ModelFailed)
    assert isinstance(unencodable, ModelFailed)
    assert isinstance(good, dict)
    assert isinstance(other, dict)
    np.testing.assert_array_equal(good["output"], [[2.0, 0.0]])
    np.testing.assert_array_equal(other["output"], [[6.0, 0.0]])
    assert model.handler.batches[-1] == 3  # NOTE: the three that decoded shared one pass


def test_a_plain_models_batch_is_split_back_into_each_requests_rows(directory: Path) -> None:
    (spec,) = [m for m in load_manifest(directory / "models.yaml").models if m.name == "pair"]
    model = load_version(spec, spec.versions[0], directory / "weights")
    requests: list[Tensors] = [
        {"a": np.full((n, 2), n, np.float32), "b": np.ones((n, 2), np.float32)} for n in (1, 3, 2)
    ]
    for inputs, answer in zip(requests, model.run_blocking(requests), strict=True):
        assert not isinstance(answer, Exception), answer
        np.testing.assert_array_equal(answer["sum"], inputs["a"] + inputs["b"])
        np.testing.assert_array_equal(answer["difference"], inputs["a"] - inputs["b"])


def test_a_plain_models_outputs_are_checked_once_a_pass_and_fail_every_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without ``unbatch`` or ``encode`` hooks each request's outputs are rows of the
    batch's, so the batch is checked against the declaration once: one log line a pass."""
    weights = tmp_path / "weights"
    liar = {
        "name": "liar",
        "inputs": [{"name": "a", "shape": [2]}, {"name": "b", "shape": [2]}],
        "outputs": [{"name": "sum", "dtype": "float64"}, {"name": "difference"}],
        "warmup": False,  # NOTE: a warm-up would refuse the version at load
        "versions": [version(weights, "liar", "SumAndDifference")],
    }
    write_manifest(tmp_path, [liar])
    (spec,) = load_manifest(tmp_path / "models.yaml").models
    model = load_version(spec, spec.versions[0], weights)
    requests: list[Tensors] = [
        {"a": np.ones((n, 2), np.float32), "b": np.ones((n, 2), np.float32)} for n in (1, 2, 1)
    ]
    with caplog.at_level(logging.ERROR):
        answers = model.run_blocking(requests)
    assert all(isinstance(answer, ModelFailed) for answer in answers), answers
    assert caplog.text.count("is float32, not float64") == 1, caplog.text


def test_variable_lengths_are_padded_and_batched_answers_equal_lone_ones(
    directory: Path, client: TestClient
) -> None:
    spec = load_manifest(directory / "models.yaml").models[1]
    model = load_version(spec, spec.versions[0], directory / "weights")
    texts = ["a", "hello", "héllo wörld, a longer one"]
    requests: list[Tensors] = [{"text": np.array([t], dtype=object)} for t in texts]
    together = model.run_blocking(requests)
    alone = [model.run_blocking([r])[0] for r in requests]
    expected = [[float(sum(t.encode()))] for t in texts]
    for shared, single, total in zip(together, alone, expected, strict=True):
        assert isinstance(shared, dict)
        assert isinstance(single, dict)
        np.testing.assert_array_equal(shared["total"], single["total"])
        np.testing.assert_array_equal(shared["total"][0], total)
    answer = predict(client, "lengths", texts)
    assert answer.json()["outputs"] == expected


@pytest.mark.parametrize(
    "inputs",
    [
        {"a": [1.0, 2.0], "b": [3.0, 5.0]},
        [{"a": [1.0, 2.0], "b": [3.0, 5.0]}],
        {"a": [[1.0, 2.0]], "b": [[3.0, 5.0]]},
    ],
    ids=["one-instance", "list-of-instances", "batched-values"],
)
def test_several_named_inputs_and_outputs_by_name(client: TestClient, inputs: object) -> None:
    answer = predict(client, "pair", inputs)
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    one = not isinstance(inputs, list) and not isinstance(inputs["a"][0], list)  # type: ignore[index]
    expected = {"sum": [4.0, 7.0], "difference": [-2.0, -3.0]}
    assert outputs == (expected if one else {k: [v] for k, v in expected.items()})


@pytest.mark.parametrize(
    ("name", "inputs", "fragment"),
    [
        ("pair", {"a": [1.0, 2.0]}, "missing input 'b'"),
        ("pair", {"a": [1.0, 2.0], "b": [1.0, 2.0], "c": 1}, "unknown input 'c'"),
        ("pair", {"a": [[1.0, 2.0]], "b": [1.0, 2.0]}, "all be one instance"),
        ("pair", [{"a": [1.0, 2.0]}], "missing input 'b'"),
        ("pair", [1.0, 2.0], "object naming each"),
        ("lengths", 5, "must hold text (JSON strings), not a number"),
        ("lengths", [["a"], "b"], "ragged"),
        ("lengths", {"b64": "aGk="}, "must hold text"),
        ("picky", {"b64": "aGk="}, "must be a number"),
        ("lengths", [["a"]], "a batch of shape [n]"),
    ],
)
def test_named_inputs_that_do_not_fit_are_422s_naming_the_input(
    client: TestClient, name: str, inputs: object, fragment: str
) -> None:
    answer = predict(client, name, inputs)
    assert answer.status_code == 422, answer.text
    assert fragment in answer.json()["error"]["message"]


def v2_infer(client: TestClient, name: str, body: dict[str, Any], binary: bytes = b"") -> Any:
    head = orjson.dumps(body)
    headers = {"inference-header-content-length": str(len(head))} if binary else {}
    return client.post(f"/v2/models/{name}/infer", content=head + binary, headers=headers)


def bytes_elements(*elements: bytes) -> bytes:
    """BYTES as tritonclient's binary extension writes it."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_v2_bytes_in_json_and_in_binary_and_several_inputs(client: TestClient) -> None:
    texts = ["a", "héllo"]
    tensor = {"name": "text", "shape": [2], "datatype": "BYTES"}
    as_json = v2_infer(client, "lengths", {"inputs": [tensor | {"data": texts}]})
    encoded = bytes_elements(*(t.encode() for t in texts))
    in_binary = v2_infer(
        client,
        "lengths",
        {"inputs": [tensor | {"parameters": {"binary_data_size": len(encoded)}}]},
        encoded,
    )
    for answer in (as_json, in_binary):
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert output["name"] == "total"
        assert output["data"] == [float(sum(t.encode())) for t in texts]
    pair = v2_infer(
        client,
        "pair",
        {
            "inputs": [
                {"name": "b", "shape": [2], "datatype": "FP32", "data": [3.0, 5.0]},
                {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
            ],
            "outputs": [{"name": "difference"}],
        },
    )
    assert pair.json()["outputs"] == [
        {"name": "difference", "shape": [2], "datatype": "FP32", "data": [-2.0, -3.0]}
    ]


@pytest.mark.parametrize(
    ("inputs", "binary", "fragment"),
    [
        ([{"name": "text", "shape": [1], "datatype": "BYTES", "data": [5]}], b"", "strings"),
        ([{"name": "text", "shape": [1], "datatype": "FP32", "data": [5]}], b"", "BYTES"),
        ([{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}], b"", "'txt'"),
        ([], b"", "missing input 'text'"),
        (
            [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", ["b"]]}],
            b"",
            "flat list of strings",
        ),
        (
            [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 6},
                }
            ],
            struct.pack("<I", 9) + b"ab",
            "runs past",
        ),
        (
            [
                {
                    "name": "text",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 5},
                }
            ],
            bytes_elements(b"a"),
            "holds 1 elements",
        ),
        (
            [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 5},
                }
            ],
            bytes_elements(b"\xff"),
            "not UTF-8",
        ),
    ],
    ids=[
        "number-for-text",
        "wrong-datatype",
        "wrong-name",
        "missing",
        "nested",
        "overrun",
        "too-few",
        "bad-utf8",
    ],
)
def test_v2_bytes_that_do_not_fit_are_422s(
    client: TestClient, inputs: list[dict[str, Any]], binary: bytes, fragment: str
) -> None:
    answer = v2_infer(client, "lengths", {"inputs": inputs}, binary)
    assert answer.status_code == 422, answer.text
    assert fragment in answer.json()["error"]


@pytest.mark.parametrize(
    ("outputs", "fragment"),
    [
        ([{}], "needs a 'name'"),
        ([{"name": "sum"}, {"name": "sum"}], "'sum' is asked for twice"),
    ],
)
def test_v2_outputs_of_a_model_of_several_are_named_once(
    client: TestClient, outputs: list[dict[str, Any]], fragment: str
) -> None:
    tensors = [
        {"name": name, "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]} for name in "ab"
    ]
    answer = v2_infer(client, "pair", {"inputs": tensors, "outputs": outputs})
    assert answer.status_code == 422
    assert fragment in answer.json()["error"]


def test_v2_the_one_output_asked_by_name_and_without_one_is_asked_twice(
    client: TestClient,
) -> None:
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}
    outputs = [{"name": "total"}, {}]
    answer = v2_infer(client, "lengths", {"inputs": [tensor], "outputs": outputs})
    assert answer.status_code == 422
    assert "'total' is asked for twice" in answer.json()["error"]


def test_v2_an_outputs_binary_data_null_counts_as_absent(client: TestClient) -> None:
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}
    body = {
        "inputs": [tensor],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "total", "parameters": {"binary_data": None}}],
    }
    answer = v2_infer(client, "lengths", body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"  # NOTE: as asked
    assert answer.content.endswith(struct.pack("<f", float(ord("a"))))


def test_v2_asks_for_an_output_the_model_lacks(client: TestClient) -> None:
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}
    answer = v2_infer(client, "lengths", {"inputs": [tensor], "outputs": [{"name": "nope"}]})
    assert answer.status_code == 422
    assert "unknown output 'nope'" in answer.json()["error"]


def test_metadata_names_every_tensor(client: TestClient) -> None:
    pair = client.get("/v2/models/pair").json()
    assert pair["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert [o["name"] for o in pair["outputs"]] == ["sum", "difference"]
    lengths = client.get("/v2/models/lengths").json()
    assert lengths["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert lengths["outputs"] == [{"name": "total", "datatype": "FP32", "shape": [-1, 1]}]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        # a warm-up that fails fails its version
        ("no-warmup", "no warm-up inputs today"),
        # the sentence encoder refuses texts it cannot read one by one
        ("two-texts", "of shape [] (one text per instance)"),
        # a quoted boolean handler argument is refused rather than read as true
        ("upright-quoted", "exif_orientation must be true or false, not 'false'"),
    ],
)
def test_a_version_that_cannot_serve_fails_with_the_reason(
    client: TestClient, name: str, reason: str
) -> None:
    (failed,) = [m for m in client.get("/models").json()["models"] if m["name"] == name]
    assert failed["state"] == "failed"
    assert reason in failed["versions"][0]["error"]


def test_a_list_of_named_instances_is_a_batch_for_one_input_too(client: TestClient) -> None:
    answer = predict(client, "lengths", [{"text": "a"}, {"text": "hi"}])
    assert answer.json()["outputs"] == [[97.0], [float(ord("h") + ord("i"))]]


def test_a_text_model_names_json_as_what_it_reads(client: TestClient) -> None:
    answer = client.post(
        "/models/lengths/predict", content=b"\x89PNG", headers={"content-type": "image/png"}
    )
    assert answer.status_code == 415
    assert answer.json()["error"]["message"] == "cannot read 'image/png'; send application/json"


def test_an_image_body_is_refused_by_an_input_of_two_images_an_instance(
    client: TestClient,
) -> None:
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, "PNG")
    answer = client.post(
        "/models/two-images/predict",
        content=buffer.getvalue(),
        headers={"content-type": "image/png"},
    )
    assert answer.status_code == 422, answer.text
    assert "input 'image' takes [2] of them" in answer.json()["error"]["message"]


def test_a_handler_that_is_not_a_handler_is_never_called(client: TestClient) -> None:
    (unsafe,) = [m for m in client.get("/models").json()["models"] if m["name"] == "unsafe"]
    assert unsafe["state"] == "failed"
    assert "not a registry.handler.Handler subclass" in unsafe["versions"][0]["error"]
    failed = 'registry_loads_total{model="unsafe",outcome="failed"} 1.0'
    assert failed in client.get("/metrics").text


@pytest.mark.parametrize("binary", [False, True])
def test_one_v2_instance_of_a_one_text_output_is_answered(client: TestClient, binary: bool) -> None:
    """A one-element ``string`` output, for a request without the batch axis."""
    answer = client.post(
        "/v2/models/labeller/infer",
        json={
            "inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "data": [0, 0, 9, 0]}],
            "parameters": {"binary_data_output": binary},
        },
    )
    assert answer.status_code == 200, answer.text
    header = answer.content
    if binary:
        header = header[: int(answer.headers["inference-header-content-length"])]
        assert answer.content[len(header) :] == struct.pack("<I", 7) + b"class-2"
    (output,) = orjson.loads(header)["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("label", "BYTES", [])
    assert output.get("data", ["class-2"]) == ["class-2"]
    assert predict(client, "labeller", [0, 0, 9, 0]).json()["outputs"] == "class-2"


def test_a_strided_output_is_answered_in_json(client: TestClient) -> None:
    """A model may answer with a view of its input (``x[:, :2]``), which stays strided."""
    rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    answer = predict(client, "columns", rows)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [[1.0, 2.0], [5.0, 6.0]]
    assert predict(client, "columns", rows[0]).json()["outputs"] == [1.0, 2.0]


def test_an_image_model_can_turn_a_tagged_photo_upright(client: TestClient) -> None:
    """Stored 4 wide and 3 high, tagged 6 (turn clockwise): the model sees it 3 wide and
    4 high, as a viewer shows it, because its manifest asks for ``exif_orientation``."""
    stored = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    exif = Image.Exif()
    exif[274] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "PNG", exif=exif.tobytes())
    answer = client.post(
        "/models/upright/predict", content=buffer.getvalue(), headers={"content-type": "image/png"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [np.rot90(stored, -1).tolist()]  # [channels, h, w]
