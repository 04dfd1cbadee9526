"""Hostile requests: each is a 4xx in its protocol's error shape, never a 500.

Every case is sent through both front ends (``client``); after each refusal a valid request
must still be served. The rules being held (dtype fitting, non-finite
floats, the batch size cap) are written down in ``registry/codec.py``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from registry.app import create_app
from tests.factories import affine_model, echo_model, write_manifest
from tests.support import make_settings, wait_ready

CAP = 8  # lin's batching.max_batch_size
X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
TYPED = ("float32", "float16", "float64", "int8", "uint8", "int64", "bool")
DATATYPES = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int8": "INT8",
    "uint8": "UINT8",
    "int64": "INT64",
    "bool": "BOOL",
}
RAW = {"content-type": "application/octet-stream"}
NPY = {"content-type": "application/x-npy"}


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi-path"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, fast_path: bool) -> Iterator[TestClient]:
    """``lin`` (an Affine classifier, float32 [4], at most CAP rows) and an echo per dtype.

    NOTE: the conftest ``client``, both front ends, but one app per module instead of one
    per case: several hundred start-ups would cost minutes. Sharing is safe because every
    case checks that the server still serves afterwards.
    """
    root = tmp_path_factory.mktemp("hostile")
    weights = root / "weights"
    lin = affine_model(
        weights,
        "lin",
        ("1",),
        output={"labels": ["a", "b", "c"]},
        batching={"max_batch_size": CAP},
    )
    echoes = []
    for dtype in TYPED:
        echo = echo_model(weights, dtype, "Tripwire")  # NOTE: no value here is 13
        echo["input"]["dtype"] = dtype
        echoes.append(echo)
    write_manifest(root, [lin, *echoes])
    with TestClient(create_app(make_settings(root, fast_path=fast_path))) as test_client:
        wait_ready(test_client)
        yield test_client


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f4", fortran: bool = False) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def zipped() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=X)
    return buffer.getvalue()


def v2(data: object = None, shape: object = None, **fields: Any) -> bytes:
    """A V2 JSON request for ``lin``; ``fields`` replace the request's, ``tensor`` the input's."""
    tensor: dict[str, Any] = {
        "name": "input",
        "shape": [4] if shape is None else shape,
        "datatype": "FP32",
        "data": X[0].tolist() if data is None else data,
    }
    tensor.update(fields.pop("tensor", {}))
    # NOTE: json, not orjson: orjson cannot write the 300-deep values some cases send.
    return json.dumps({"id": "r-1", "inputs": [tensor], **fields}).encode()


def v2_binary(
    array: np.ndarray,
    datatype: str = "FP32",
    size: object = None,
    extra: bytes = b"",
    shape: object = None,
    **fields: Any,
) -> tuple[bytes, dict[str, str]]:
    """A V2 request with the tensor's bytes after the JSON header (Triton's extension)."""
    raw = array.tobytes()
    tensor = {
        "name": "input",
        "shape": list(array.shape) if shape is None else shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": len(raw) if size is None else size},
    }
    head = orjson.dumps({"inputs": [tensor], **fields})
    return head + raw + extra, RAW | {"inference-header-content-length": str(len(head))}


def nested(depth: int) -> object:
    value: object = 1.0
    for _ in range(depth):
        value = [value]
    return value


def assert_refused(response: Any, status: int, fragment: str) -> dict[str, Any] | str:
    """The status and the protocol's error shape; returns the error."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if response.url.path.startswith("/v2/"):
        assert isinstance(error, str)
        assert fragment in error
    else:
        assert set(error) >= {"code", "message"}
        assert fragment in error["message"]
    return error  # type: ignore[no-any-return]


def assert_still_serving(client: TestClient) -> None:
    assert client.post("/models/lin/predict", json={"inputs": X.tolist()}).status_code == 200
    v2_ok = client.post("/v2/models/lin/infer", content=v2())
    assert v2_ok.status_code == 200, v2_ok.text


# --- native raw tensors and .npy (defect 4) -----------------------------------------------

HOSTILE_NATIVE = [
    pytest.param(
        b"\0" * 32,
        RAW | {"x-shape": "4611686018427387904,4"},
        413,
        "at most 8",
        id="xshape-huge-rows",
    ),
    pytest.param(
        b"\0" * 32,
        RAW | {"x-shape": "4611686018427387904,4611686018427387904"},
        422,
        "expected one instance",
        id="xshape-product-overflows",
    ),
    pytest.param(
        b"\0" * 32,
        RAW | {"x-shape": "99999999999999999999,4"},
        422,
        "comma",
        id="xshape-past-int64",
    ),
    pytest.param(
        b"\0" * 4, RAW | {"x-shape": ",".join(["1"] * 70)}, 422, "comma", id="xshape-70-axes"
    ),
    pytest.param(
        b"\0" * 16,
        RAW | {"x-shape": ",".join(["1"] * 63 + ["4"])},
        422,
        "expected one instance",
        id="xshape-64-axes",
    ),
    pytest.param(b"\0" * 16, RAW | {"x-shape": "-1,4"}, 422, "comma", id="xshape-negative"),
    pytest.param(b"\0" * 16, RAW | {"x-shape": "1,,4"}, 422, "comma", id="xshape-empty-part"),
    pytest.param(b"\0" * 16, RAW | {"x-shape": "4,"}, 422, "comma", id="xshape-trailing-comma"),
    pytest.param(b"\0" * 16, RAW | {"x-shape": " "}, 422, "comma", id="xshape-blank"),
    pytest.param(b"\0" * 16, RAW | {"x-shape": "1_0,4"}, 422, "comma", id="xshape-underscore"),
    pytest.param(b"\0" * 16, RAW | {"x-shape": "+1,4"}, 422, "comma", id="xshape-plus"),
    pytest.param(b"\0" * 16, RAW | {"x-shape": "9" * 5000}, 422, "comma", id="xshape-5000-digits"),
    pytest.param(b"", RAW | {"x-shape": "0,4"}, 422, "empty", id="xshape-zero-rows"),
    pytest.param(
        npy_header((2**40, 64)), NPY, 422, "expected one instance", id="npy-unallocatable"
    ),
    pytest.param(npy_header((2**40, 4)), NPY, 413, "at most 8", id="npy-huge-rows"),
    pytest.param(npy_header((-1, 4)), NPY, 422, "not an array shape", id="npy-negative-dim"),
    pytest.param(npy_header((1,) * 65), NPY, 422, "not an array shape", id="npy-65-axes"),
    pytest.param(npy_header((2, 4)), NPY, 422, "0 follow", id="npy-header-only"),
    pytest.param(npy(X)[:-3], NPY, 422, "29 follow", id="npy-truncated"),
    pytest.param(npy(X) + b"\0" * 4, NPY, 422, "36 follow", id="npy-trailing-bytes"),
    pytest.param(zipped(), NPY, 422, "not a .npy array", id="npz-archive"),
    pytest.param(b"PK\x03\x04" + b"\0" * 60, NPY, 422, "not a .npy array", id="broken-zip"),
    pytest.param(b"\x93NUMPY", NPY, 422, "not a .npy array", id="npy-magic-only"),
    pytest.param(
        b"\x93NUMPY\x03\x00" + npy(X)[8:], NPY, 422, "not a .npy array", id="npy-version-3"
    ),
    pytest.param(npy_header((4,), "{'a': 1}"), NPY, 422, "not a .npy array", id="npy-bad-descr"),
    pytest.param(
        npy(X).replace(b"'shape': (", b"'shape': \xf8", 1),
        NPY,
        422,
        "not a .npy array",
        id="npy-header-garbled",
    ),
    pytest.param(
        npy(np.zeros(4, dtype=[("a", "<f4")])), NPY, 422, "does not cast", id="npy-structured"
    ),
    pytest.param(
        npy(np.array([1.0, None, 2.0, 3.0], dtype=object)),
        NPY,
        422,
        "does not cast",
        id="npy-object",
    ),
    pytest.param(npy(X.astype(np.complex64)), NPY, 422, "does not cast", id="npy-complex"),
    pytest.param(
        npy(np.zeros(4, dtype="datetime64[D]")), NPY, 422, "does not cast", id="npy-datetime"
    ),
    pytest.param(npy(X.T.copy()), NPY, 422, "expected one instance", id="npy-wrong-shape"),
]


@pytest.mark.parametrize(("content", "headers", "status", "fragment"), HOSTILE_NATIVE)
def test_hostile_raw_and_npy_bodies_are_refused(
    client: TestClient, content: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    response = client.post("/models/lin/predict", content=content, headers=headers)
    error = assert_refused(response, status, fragment)
    assert isinstance(error, dict)
    if status == 413:
        assert error["max_batch_size"] == CAP
    assert_still_serving(client)


def test_a_fortran_order_npy_is_read_in_its_order(client: TestClient) -> None:
    fortran = npy(np.asfortranarray(X))
    assert b"'fortran_order': True" in fortran
    response = client.post("/models/lin/predict", content=fortran, headers=NPY)
    expected = client.post("/models/lin/predict", json={"inputs": X.tolist()})
    assert response.status_code == 200, response.text
    assert response.json() == expected.json()


# --- V2 requests (defect 4) -----------------------------------------------------------------

HOSTILE_V2 = [
    pytest.param(
        v2(tensor={"parameters": []}), 422, "'parameters' must be", id="tensor-params-list"
    ),
    pytest.param(
        v2(tensor={"parameters": "x"}), 422, "'parameters' must be", id="tensor-params-str"
    ),
    pytest.param(v2(tensor={"parameters": 1}), 422, "'parameters' must be", id="tensor-params-num"),
    pytest.param(v2(parameters=[]), 422, "'parameters' must be", id="request-params-list"),
    pytest.param(v2(parameters="x"), 422, "'parameters' must be", id="request-params-str"),
    pytest.param(v2(parameters=1.5), 422, "'parameters' must be", id="request-params-num"),
    pytest.param(v2(outputs="output"), 422, "'outputs' must be", id="outputs-str"),
    pytest.param(v2(outputs={"name": "output"}), 422, "'outputs' must be", id="outputs-object"),
    pytest.param(v2(outputs=[1]), 422, "'outputs' must be", id="outputs-of-numbers"),
    pytest.param(v2(outputs=["output"]), 422, "'outputs' must be", id="outputs-of-strings"),
    pytest.param(v2(outputs=[{"name": 5}]), 422, "'outputs' must be", id="output-name-number"),
    pytest.param(
        v2(outputs=[{"name": "output", "parameters": "x"}]),
        422,
        "'outputs' must be",
        id="output-params-str",
    ),
    pytest.param(
        v2(outputs=[{"name": "output", "parameters": {"binary_data": "yes"}}]),
        422,
        "'outputs' must be",
        id="output-binary-data-str",
    ),
    pytest.param(v2(id=nested(300)), 422, "'id' must be a string", id="id-nested-300"),
    pytest.param(v2(id=5), 422, "'id' must be a string", id="id-number"),
    pytest.param(v2(id={"a": "b"}), 422, "'id' must be a string", id="id-object"),
    pytest.param(v2(tensor={"name": 5}), 422, "'name' must be a string", id="input-name-number"),
    pytest.param(
        v2(tensor={"datatype": nested(900)}), 422, "the model takes FP32", id="datatype-nested"
    ),
    pytest.param(v2(shape=[2**62, 4]), 413, "at most 8", id="shape-huge-rows"),
    pytest.param(
        v2(shape=[2**62, 2**62]), 422, "expected one instance", id="shape-product-overflows"
    ),
    pytest.param(
        v2(shape=[2**64 - 1, 4]), 422, "'shape' of input 'input' must be", id="shape-past-int64"
    ),
    pytest.param(v2(shape=[1] * 70), 422, "'shape' of input 'input' must be", id="shape-70-axes"),
    pytest.param(v2(shape=[-1, 4]), 422, "'shape' of input 'input' must be", id="shape-negative"),
    pytest.param(v2(shape=[True, 4]), 422, "'shape' of input 'input' must be", id="shape-bool"),
    pytest.param(v2(shape=[4.0]), 422, "'shape' of input 'input' must be", id="shape-float"),
    pytest.param(v2(shape="4"), 422, "'shape' of input 'input' must be", id="shape-str"),
    pytest.param(v2(shape=[0, 4], data=[]), 422, "empty", id="shape-zero-rows"),
    pytest.param(v2(data=[[1, 2], [3, 4, 5]]), 422, "ragged", id="data-ragged"),
    pytest.param(v2(data=[[1.0, 2.0], 3.0, 4.0]), 422, "ragged", id="data-mixed-nesting"),
    pytest.param(v2(data=[nested(300)] * 4), 422, "ragged", id="data-nested-300"),
    pytest.param(v2(data=[1.0, 2.0, 3.0]), 422, "3 values", id="data-too-few"),
    pytest.param(v2(data=[0.0] * 5), 422, "more than the 4", id="data-too-many"),
    pytest.param(v2(data="1,2,3,4"), 422, "'data' of input 'input' must be a list", id="data-str"),
    pytest.param(
        v2(data={"a": 1}), 422, "'data' of input 'input' must be a list", id="data-object"
    ),
    pytest.param(v2(data=[{"a": 1}] * 4), 422, "non-numeric", id="data-of-objects"),
    pytest.param(b'{"inputs": [1]}', 422, "exactly one input", id="inputs-of-numbers"),
    pytest.param(b"[1, 2]", 422, "JSON object", id="request-not-an-object"),
    pytest.param(b'{"inputs": [', 400, "not valid JSON", id="truncated-json"),
]


@pytest.mark.parametrize(("content", "status", "fragment"), HOSTILE_V2)
def test_hostile_v2_requests_are_refused(
    client: TestClient, content: bytes, status: int, fragment: str
) -> None:
    response = client.post("/v2/models/lin/infer", content=content)
    assert_refused(response, status, fragment)
    assert_still_serving(client)


def _binary_cases() -> list[Any]:
    ok = X[:1]
    cases = []
    for size in (-1, 1.5, "16", True, [16]):
        body, headers = v2_binary(ok, size=size)
        cases.append(pytest.param(body, headers, 422, "non-negative integer", id=f"size-{size!r}"))
    body, headers = v2_binary(ok, size=1000)
    cases.append(pytest.param(body, headers, 422, "16 bytes follow", id="size-lies-larger"))
    body, headers = v2_binary(ok, size=8)
    cases.append(pytest.param(body, headers, 422, "16 bytes follow", id="size-lies-smaller"))
    body, headers = v2_binary(ok, extra=b"\0" * 4)
    cases.append(pytest.param(body, headers, 422, "20 bytes follow", id="bytes-left-over"))
    body, headers = v2_binary(X, shape=[1, 4])
    cases.append(pytest.param(body, headers, 422, "is 16 bytes", id="shape-smaller-than-bytes"))
    body, headers = v2_binary(ok, shape=[2**62, 4])
    cases.append(pytest.param(body, headers, 413, "at most 8", id="shape-huge-rows"))
    body, headers = v2_binary(ok, shape=[1, 2**62])
    cases.append(pytest.param(body, headers, 422, "expected one instance", id="shape-huge"))
    body, _ = v2_binary(ok)
    head_only = body[: -ok.nbytes]
    cases.append(pytest.param(head_only, {}, 422, "0 bytes follow", id="size-without-binary-part"))
    cases.append(
        pytest.param(
            v2(tensor={"parameters": {"binary_data_size": 0}}),
            {},
            422,
            "both 'data' and 'binary_data_size'",
            id="size-and-data",
        )
    )
    with_data = orjson.dumps({"inputs": [{"name": "input", "shape": [4], "datatype": "FP32"}]})
    cases.append(
        pytest.param(
            with_data + ok.tobytes(),
            {"inference-header-content-length": str(len(with_data))},
            422,
            "no 'binary_data_size'",
            id="binary-part-without-size",
        )
    )
    # NOTE: latin-1 is how HTTP header bytes become text; '²' passes str.isdigit().
    for value in ("²".encode("latin-1"), b"-1", b"abc", b"1.5", b"", b"99999", b"1" * 30):
        cases.append(
            pytest.param(
                body,
                {"inference-header-content-length": value},
                400,
                "Inference-Header-Content-Length",
                id=f"header-length-{value[:5].decode('latin-1')!r}",
            )
        )
    cases.append(
        pytest.param(
            body, {"inference-header-content-length": "10"}, 400, "not valid JSON", id="split-json"
        )
    )
    return cases


@pytest.mark.parametrize(("content", "headers", "status", "fragment"), _binary_cases())
def test_hostile_v2_binary_requests_are_refused(
    client: TestClient, content: bytes, headers: Mapping[str, Any], status: int, fragment: str
) -> None:
    response = client.post("/v2/models/lin/infer", content=content, headers=headers)
    assert_refused(response, status, fragment)
    assert_still_serving(client)


def test_a_null_optional_field_counts_as_absent(client: TestClient) -> None:
    body = v2(id=None, parameters=None, outputs=None, tensor={"parameters": None})
    response = client.post("/v2/models/lin/infer", content=body)
    assert response.status_code == 200, response.text
    assert "id" not in response.json()
    raw = X[0].tobytes()
    tensor = {
        "name": "input",
        "shape": [4],
        "datatype": "FP32",
        "data": None,
        "parameters": {"binary_data_size": len(raw)},
    }
    head = orjson.dumps({"inputs": [tensor], "outputs": [{"name": None, "parameters": None}]})
    binary = client.post(
        "/v2/models/lin/infer",
        content=head + raw,
        headers={"inference-header-content-length": str(len(head))},
    )
    assert binary.status_code == 200, binary.text
    assert binary.json()["outputs"][0]["name"] == "output"


# --- values that do not fit the dtype (defect 7) ------------------------------------------

# (model, one instance of 4 values, accepted); both JSON routes must agree on every one.
VALUES = [
    pytest.param("float32", [3.5e38, 0, 0, 0], False, id="f32-overflow"),
    pytest.param("float32", [-3.5e38, 0, 0, 0], False, id="f32-negative-overflow"),
    pytest.param("float32", [1e308, 0, 0, 0], False, id="f32-1e308"),
    pytest.param("float32", [3.4e38, -3.4e38, 1e-45, 0], True, id="f32-largest"),
    pytest.param("float16", [65504, -65504, 0.5, 0], True, id="f16-largest"),
    pytest.param("float32", [3.4028235e38, -3.4028235e38, 0, 0], True, id="f32-largest-written"),
    pytest.param("float32", [3.4028236e38, 0, 0, 0], False, id="f32-rounds-to-inf"),
    pytest.param("float16", [65519.0, -65519, 0, 0], True, id="f16-rounds-to-largest"),
    pytest.param("float16", [65520.0, 0, 0, 0], False, id="f16-float-overflow"),
    pytest.param("float16", [0, -65520, 0, 0], False, id="f16-int-rounds-to-inf"),
    pytest.param("float16", [70000, 0, 0, 0], False, id="f16-int-overflow"),
    pytest.param("float64", [1e308, -1e308, 0, 0], True, id="f64-largest"),
    pytest.param("int8", [127, -128, 0, 1], True, id="i8-range"),
    pytest.param("int8", [300, 0, 0, 0], False, id="i8-300"),
    pytest.param("int8", [-129, 0, 0, 0], False, id="i8-minus-129"),
    pytest.param("uint8", [255, 0, 1, 2], True, id="u8-range"),
    pytest.param("uint8", [300, 0, 0, 0], False, id="u8-300"),
    pytest.param("uint8", [-1, 0, 0, 0], False, id="u8-negative"),
    pytest.param("int64", [2**63 - 1, -(2**63), 0, 1], True, id="i64-range"),
    pytest.param("int64", [2**64 - 1, 0, 0, 0], False, id="i64-uint64-max"),
    pytest.param("int64", [2**70, 0, 0, 0], False, id="i64-2-to-70"),
    pytest.param("int64", [-(2**63) - 1, 0, 0, 0], False, id="i64-below-min"),
    pytest.param("int8", [1.5, 0, 0, 0], False, id="i8-fraction"),
    pytest.param("int8", [1.0, 0, 0, 0], False, id="i8-float"),
    pytest.param("float32", [None, 0, 0, 0], False, id="null"),
    pytest.param("float32", ["1.5", 0, 0, 0], False, id="numeric-string"),
    pytest.param("float32", [[1], 0, 0, 0], False, id="ragged"),
    pytest.param("float32", [True, False, 1, 0], True, id="bools-as-numbers"),
    pytest.param("float32", [1, 2.5, True, 4], True, id="mixed-numbers"),
    pytest.param("int8", [True, False, True, 5], True, id="bools-into-int8"),
    pytest.param("bool", [True, False, True, False], True, id="bool"),
    pytest.param("bool", [1, 0, 1, 0], False, id="ints-into-bool"),
    pytest.param("bool", [1.0, 0.0, 1.0, 0.0], False, id="floats-into-bool"),
]


@pytest.mark.parametrize(("model", "values", "accepted"), VALUES)
def test_both_json_routes_accept_exactly_the_values_that_fit(
    client: TestClient, model: str, values: list[object], accepted: bool
) -> None:
    native = client.post(f"/models/{model}/predict", json={"inputs": values})
    tensor = {"name": "input", "shape": [4], "datatype": DATATYPES[model], "data": values}
    infer = client.post(f"/v2/models/{model}/infer", json={"inputs": [tensor]})
    if accepted:
        assert native.status_code == infer.status_code == 200, (native.text, infer.text)
        (output,) = infer.json()["outputs"]
        assert native.json()["outputs"] == output["data"]
        np.testing.assert_array_equal(
            np.asarray(output["data"], dtype=model), np.asarray(values, dtype=model)
        )
    else:
        assert_refused(native, 422, "")
        assert_refused(infer, 422, "")
        assert native.json()["error"]["message"] == infer.json()["error"].replace(
            "the 'data' of input 'input'", "'inputs'"
        )
    assert_still_serving(client)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_json_literals_are_invalid_json(client: TestClient, literal: bytes) -> None:
    native = client.post(
        "/models/lin/predict",
        content=b'{"inputs": [' + literal + b", 0, 0, 0]}",
        headers={"content-type": "application/json"},
    )
    error = assert_refused(native, 400, "not valid JSON")
    assert isinstance(error, dict)
    assert error["code"] == "invalid_json"
    infer = client.post(
        "/v2/models/lin/infer", content=v2(data=[0.0] * 4).replace(b"0.0", literal, 1)
    )
    assert_refused(infer, 400, "not valid JSON")


NON_FITTING_BINARY = [
    pytest.param("float32", npy(np.array([np.nan, 0, 0, 0])), NPY, id="npy-nan"),
    pytest.param("float32", npy(np.array([np.inf, 0, 0, 0], "f4")), NPY, id="npy-inf"),
    pytest.param("float32", npy(np.array([1e39, 0, 0, 0])), NPY, id="npy-f64-overflow"),
    pytest.param("float64", npy(np.array([-np.inf, 0, 0, 0])), NPY, id="npy-f64-inf"),
    pytest.param("float64", npy(np.array([np.nan, 0, 0, 0], "f4")), NPY, id="npy-f32-nan-into-f64"),
    pytest.param("float32", npy(np.array([np.inf, 0, 0, 0], "f2")), NPY, id="npy-f16-inf-into-f32"),
    pytest.param("int8", npy(np.array([300, 0, 0, 0])), NPY, id="npy-i64-300-into-i8"),
    pytest.param("uint8", npy(np.array([-1, 0, 0, 0])), NPY, id="npy-negative-into-u8"),
    pytest.param("int8", npy(np.array([200, 0, 0, 0], "u1")), NPY, id="npy-u8-200-into-i8"),
    pytest.param("int64", npy(np.array([2**64 - 1, 0, 0, 0], "u8")), NPY, id="npy-u64-into-i64"),
    pytest.param("int8", npy(np.zeros(4, "f4")), NPY, id="npy-float-into-int"),
    pytest.param("bool", npy(np.zeros(4, "i1")), NPY, id="npy-int-into-bool"),
    pytest.param(
        "float32",
        np.array([np.nan, 0, 0, 0], "<f4").tobytes(),
        RAW | {"x-shape": "4"},
        id="raw-nan",
    ),
    pytest.param(
        "float16",
        np.array([0, 0, 0, -np.inf], "<f2").tobytes(),
        RAW | {"x-shape": "4"},
        id="raw-f16-inf",
    ),
    pytest.param("bool", bytes([0, 1, 2, 0]), RAW | {"x-shape": "4"}, id="raw-bool-byte-2"),
    pytest.param("bool", npy_header((4,), "|b1") + bytes([0, 5, 1, 0]), NPY, id="npy-bool-byte-5"),
]


@pytest.mark.parametrize(("model", "content", "headers"), NON_FITTING_BINARY)
def test_binary_values_that_do_not_fit_are_refused(
    client: TestClient, model: str, content: bytes, headers: dict[str, str]
) -> None:
    response = client.post(f"/models/{model}/predict", content=content, headers=headers)
    assert_refused(response, 422, "")
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("model", "array"),
    [
        pytest.param("float32", np.array([np.nan, 0, 0, 0], "<f4"), id="nan"),
        pytest.param("float64", np.array([0, np.inf, 0, 0], "<f8"), id="inf"),
        pytest.param("bool", np.frombuffer(bytes([0, 1, 7, 0]), np.uint8), id="bool-byte-7"),
    ],
)
def test_v2_binary_values_that_do_not_fit_are_refused(
    client: TestClient, model: str, array: np.ndarray
) -> None:
    body, headers = v2_binary(array, DATATYPES[model])
    assert_refused(client.post(f"/v2/models/{model}/infer", content=body, headers=headers), 422, "")
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("model", "array"),
    [
        pytest.param("uint8", np.array([255, 0, 1, 2]), id="i64-into-u8"),
        pytest.param("int8", np.array([-128, 127, 0, 1], "i2"), id="i16-into-i8"),
        pytest.param("float32", np.array([1.5, -2, 0, 3.25]), id="f64-into-f32"),
        pytest.param("float64", np.array([1.5, -2, 0, 3.25], "f4"), id="f32-into-f64"),
        pytest.param("float32", np.array([1.5, -2, 0, 65504], "f2"), id="f16-into-f32"),
        pytest.param("float16", np.array([1, 2, 3, 4], "i8"), id="i64-into-f16"),
        pytest.param("float32", np.array([True, False, True, True]), id="bool-into-f32"),
        pytest.param("float32", np.array([1.5, -2, 0, 3.25], ">f4"), id="big-endian"),
    ],
)
def test_npy_values_that_fit_are_cast(client: TestClient, model: str, array: np.ndarray) -> None:
    response = client.post(
        f"/models/{model}/predict",
        content=npy(array),
        headers=NPY | {"accept": "application/x-npy"},
    )
    assert response.status_code == 200, response.text
    outputs = np.load(io.BytesIO(response.content), allow_pickle=False)
    np.testing.assert_array_equal(outputs, array.astype(model) * 1)


# --- one request never exceeds max_batch_size (defect 8) --------------------------------------


def _batch_requests(rows: int) -> list[Any]:
    batch = np.ones((rows, 4), np.float32)
    body, headers = v2_binary(batch)
    return [
        pytest.param(
            "/models/lin/predict", orjson.dumps({"inputs": batch.tolist()}), {}, id="json"
        ),
        pytest.param(
            "/models/lin/predict", batch.tobytes(), RAW | {"x-shape": f"{rows},4"}, id="raw"
        ),
        pytest.param("/models/lin/predict", npy(batch), NPY, id="npy"),
        pytest.param(
            "/v2/models/lin/infer",
            v2(data=batch.reshape(-1).tolist(), shape=[rows, 4]),
            {},
            id="v2-json",
        ),
        pytest.param("/v2/models/lin/infer", body, headers, id="v2-binary"),
    ]


@pytest.mark.parametrize(("path", "content", "headers"), _batch_requests(CAP + 1))
def test_more_rows_than_max_batch_size_is_413(
    client: TestClient, path: str, content: bytes, headers: dict[str, str]
) -> None:
    response = client.post(path, content=content, headers=headers)
    error = assert_refused(response, 413, f"at most {CAP} per request")
    if isinstance(error, dict):
        assert error["code"] == "payload_too_large"
        assert (error["max_batch_size"], error["received_rows"]) == (CAP, CAP + 1)
    assert_still_serving(client)


@pytest.mark.parametrize(("path", "content", "headers"), _batch_requests(CAP))
def test_a_full_batch_is_served(
    client: TestClient, path: str, content: bytes, headers: dict[str, str]
) -> None:
    response = client.post(path, content=content, headers=headers)
    assert response.status_code == 200, response.text


def test_a_huge_json_batch_is_refused_before_it_is_read(client: TestClient) -> None:
    # NOTE: ragged too, which only np.asarray would find: the row count is checked first.
    rows = [[0.0, 0.0, 0.0, 0.0]] * 100_000 + [[0.0]]
    response = client.post("/models/lin/predict", json={"inputs": rows})
    error = assert_refused(response, 413, "at most 8")
    assert isinstance(error, dict)
    assert error["received_rows"] == 100_001
