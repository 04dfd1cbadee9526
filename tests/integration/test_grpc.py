"""The Open Inference Protocol over gRPC, against NVIDIA's own client and a real process.

One server serves the repository's ``models.yaml`` with ``--grpc-port``: health, readiness
and metadata as the HTTP V2 routes give them, every example model's answer equal to the
HTTP V2 route's for the same input, and bad requests refused with the status of their
class while the server stays healthy. A second serves small test models from a manifest
written here (an echo that sleeps, an affine model, a two-output model): client deadlines,
cancellation, and hot reloads under gRPC load. Shutdown runs on servers of its own.
"""

from __future__ import annotations

import queue
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc as grpc_lib
import httpx
import numpy as np
import numpy.typing as npt
import orjson
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bench.protocols import Sink
from registry import __version__
from registry.examples.data import diabetes_split, digits_split
from registry.examples.digit_images import render_png
from tests.factories import (
    affine_model,
    affine_outputs,
    echo_model,
    parameterless_version,
    write_manifest,
)
from tests.integration.conftest import Examples
from tests.integration.server import (
    REPOSITORY,
    Server,
    free_port,
    in_flight,
    samples,
    serving,
    start,
)
from tests.integration.test_end_to_end import in_process
from tests.integration.test_reload_live import ADMIN, AUTH, replace_manifest
from tests.support import wait_for

pytestmark = pytest.mark.integration

MANIFEST = REPOSITORY / "models.yaml"
EXAMPLES = ("digits", "digits-cnn", "diabetes", "minilm", "similarity", "digits-image")
ROWS = 8
TEXTS = [
    "A man is eating food.",
    "Café société: naïve façades, Zürich — 42 km at 3.14 °C.",
    "北京是中国的首都。",
    "unbelievably-hyphenated_snake_case tokens like GPT-4o & C++ 🙂",
]
OTHER_TEXTS = [
    "A man is eating a piece of bread.",
    "The stock market fell sharply on Tuesday.",
    "Beijing is the capital of China.",
    "",
]
SLEEP_S = 0.6  # the toy server's Sleepy forward pass
X = [0.5, -1.0, 2.0, 0.25]  # the affine model's input, as in test_reload_live
LOAD_REQUESTS = 2000
LOAD_CLIENTS = 4
RELOADS = 10

Array = npt.NDArray[Any]


class Tensor(NamedTuple):
    name: str
    datatype: str
    data: Array


@dataclass(frozen=True)
class Running:
    """A server process and the address of its gRPC port."""

    server: Server
    grpc: str

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.grpc)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc(examples: Examples) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(examples.grpc)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def http(examples: Examples) -> Iterator[httpx.Client]:
    with examples.server.client() as client:
        yield client


def toy_models(weights: Path, flip_version: str) -> list[dict[str, Any]]:
    sleepy = echo_model(weights, "sleepy", "Sleepy", seconds=SLEEP_S)
    sleepy["warmup"] = False
    pair = {
        "name": "pair",
        "inputs": [{"name": "a", "shape": [2]}, {"name": "b", "shape": [2]}],
        "outputs": [{"name": "sum"}, {"name": "difference"}],
        "versions": [parameterless_version(weights, "pair", "tests.handlers:SumAndDifference")],
    }
    labeller = {
        "name": "labeller",
        "input": {"shape": [4]},
        "outputs": [{"name": "label", "dtype": "string", "shape": []}],
        "handler": "tests.handlers:Labeller",
        "versions": [parameterless_version(weights, "labeller", "tests.handlers:Identity")],
    }
    return [affine_model(weights, "flip", (flip_version,)), sleepy, pair, labeller]


@pytest.fixture(scope="module")
def toys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("grpc-toys")


@pytest.fixture(scope="module")
def collector() -> Iterator[Sink]:
    with Sink(keep=True) as sink:
        yield sink


@pytest.fixture(scope="module")
def toys(toys_dir: Path, collector: Sink) -> Iterator[Running]:
    """The toy models, traced: spans go to ``collector`` within a tenth of a second."""
    write_manifest(toys_dir, toy_models(toys_dir / "weights", "1"))
    port = free_port()
    args = ["--manifest", str(toys_dir / "models.yaml"), "--grpc-port", str(port)]
    env = ADMIN | {"REGISTRY_OTEL_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with serving(toys_dir, args, env) as server:
        yield Running(server, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def toy_grpc(toys: Running) -> Iterator[grpcclient.InferenceServerClient]:
    client = toys.client()
    try:
        yield client
    finally:
        client.close()


# --- helpers ------------------------------------------------------------------------------


def grpc_inputs(tensors: Sequence[Tensor]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, datatype, data in tensors:
        tensor = grpcclient.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def grpc_infer(
    client: grpcclient.InferenceServerClient,
    model: str,
    tensors: Sequence[Tensor],
    version: str = "",
    output: str | None = None,
    timeout_s: float = 30,
) -> grpcclient.InferResult:
    wanted = None if output is None else [grpcclient.InferRequestedOutput(output)]
    return client.infer(
        model,
        grpc_inputs(tensors),
        model_version=version,
        outputs=wanted,
        client_timeout=timeout_s,
    )


def grpc_outputs(result: grpcclient.InferResult) -> dict[str, tuple[str, list[int], Array]]:
    """Each output by name: its datatype, shape and values, as the response gives them."""
    return {
        output.name: (output.datatype, list(output.shape), result.as_numpy(output.name))
        for output in result.get_response().outputs
    }


def http_request(
    model: str, tensors: Sequence[Tensor], version: str = "", output: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The same request for ``POST /v2/models/...infer``: JSON ``data``, except ``BYTES``
    elements that are bytes (images), which go in Triton's binary extension as a 4-byte
    little-endian length and the bytes (JSON carries only text)."""
    entries, parts = [], []
    for name, datatype, data in tensors:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(data.shape)}
        flat = data.reshape(-1)
        if datatype == "BYTES" and isinstance(flat[0], bytes):
            part = b"".join(struct.pack("<I", len(e)) + e for e in flat)
            entry["parameters"] = {"binary_data_size": len(part)}
            parts.append(part)
        else:
            entry["data"] = flat.tolist()
        entries.append(entry)
    document: dict[str, Any] = {"inputs": entries}
    if output is not None:
        document["outputs"] = [{"name": output}]
    head = orjson.dumps(document)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    if not parts:
        return path, {"content": head, "headers": {"content-type": "application/json"}}
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }
    return path, {"content": head + b"".join(parts), "headers": headers}


def http_infer(
    client: httpx.Client,
    model: str,
    tensors: Sequence[Tensor],
    version: str = "",
    output: str | None = None,
) -> tuple[str, dict[str, tuple[str, list[int], Array]]]:
    """The HTTP V2 route's answer: the version it reports and each output by name."""
    path, request = http_request(model, tensors, version, output)
    response = client.post(path, **request)
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = {
        o["name"]: (o["datatype"], o["shape"], np.asarray(o["data"]).reshape(o["shape"]))
        for o in body["outputs"]
    }
    return body["model_version"], outputs


def http_error(client: httpx.Client, model: str, tensors: Sequence[Tensor], **kw: Any) -> str:
    path, request = http_request(model, tensors, **kw)
    response = client.post(path, **request)
    assert 400 <= response.status_code < 500, response.text
    message: str = response.json()["error"]
    return message


def refused(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def digits(rows: int = ROWS) -> Array:
    return digits_split().x_test[:rows]


def good_digits(grpc: grpcclient.InferenceServerClient) -> None:
    """A good request still works, and gives torch's answer."""
    x = digits(4)
    result = grpc_infer(grpc, "digits", [Tensor("input", "FP32", x)])
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(
        result.as_numpy("output"), in_process("digits", "2", x), rtol=1e-4, atol=1e-6
    )
    assert grpc.is_server_ready()


def sleepy_input(value: float) -> Tensor:
    return Tensor("input", "FP32", np.array([[value, 0, 0, 0]], dtype=np.float32))


# --- 1. health, readiness, metadata -------------------------------------------------------


def test_health_and_server_metadata(
    grpc: grpcclient.InferenceServerClient, http: httpx.Client
) -> None:
    assert grpc.is_server_live() is True
    assert grpc.is_server_ready() is True
    metadata = grpc.get_server_metadata()
    over_http = http.get("/v2").json()
    assert (metadata.name, metadata.version) == (over_http["name"], over_http["version"])
    assert metadata.version == __version__


@pytest.mark.parametrize(
    ("model", "version"),
    [(name, "") for name in EXAMPLES]
    + [("digits", "1"), ("digits", "2"), ("digits", "stable"), ("digits", "canary")],
)
def test_model_ready_as_over_http(
    grpc: grpcclient.InferenceServerClient, http: httpx.Client, model: str, version: str
) -> None:
    assert grpc.is_model_ready(model, version) is True
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
    assert http.get(path).json() == {"name": model, "ready": True}


@pytest.mark.parametrize(
    ("model", "version", "names"),
    [("nope", "", ["'nope'"]), ("digits", "9", ["'digits'", "'9'"])],
    ids=["unknown-model", "unknown-version"],
)
def test_what_the_manifest_lacks_is_not_ready_and_its_metadata_not_found(
    grpc: grpcclient.InferenceServerClient, model: str, version: str, names: list[str]
) -> None:
    """Not ready rather than an error, as Triton answers and as HTTP's client reads a 404:
    a client polling for a model that is not there yet gets False."""
    assert grpc.is_model_ready(model, version) is False
    error = refused(lambda: grpc.get_model_metadata(model, version))
    assert error.status() == "StatusCode.NOT_FOUND", error
    assert all(name in error.message() for name in names), error.message()
    assert grpc.is_server_ready()


def metadata_as_dict(metadata: Any) -> dict[str, Any]:
    def tensors(described: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in described]

    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }


@pytest.mark.parametrize(
    ("model", "version"),
    [(name, "") for name in EXAMPLES] + [("digits", "1"), ("digits", "2"), ("digits", "stable")],
)
def test_model_metadata_equals_the_http_v2_route(
    grpc: grpcclient.InferenceServerClient, http: httpx.Client, model: str, version: str
) -> None:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    over_http = http.get(path).json()
    assert metadata_as_dict(grpc.get_model_metadata(model, version)) == over_http
    # NOTE: nothing left undeclared (every example declares or warms up its outputs)
    assert over_http["inputs"]
    assert over_http["outputs"]


def test_model_metadata_by_version_describes_that_version(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    """digits:1 is TorchScript, digits:2 a state dict: the version asked for is described."""
    assert grpc.get_model_metadata("digits", "1").platform == "pytorch_torchscript"
    assert grpc.get_model_metadata("digits", "stable").platform == "pytorch_torchscript"
    assert grpc.get_model_metadata("digits", "2").platform == "pytorch_state_dict"
    digits_meta = grpc.get_model_metadata("digits")
    assert list(digits_meta.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in digits_meta.inputs] == [
        ("input", "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in digits_meta.outputs] == [
        ("output", "FP32", [-1, 10])
    ]


# --- 2. inference on every example model --------------------------------------------------


def example_case(model: str) -> tuple[list[Tensor], str]:
    """A request for ``model`` (inputs) and the name of its one output."""
    split = digits_split()
    if model == "digits":
        return [Tensor("input", "FP32", digits())], "output"
    if model == "digits-one-instance":
        return [Tensor("input", "FP32", split.x_test[0])], "output"
    if model == "digits-cnn":
        return [Tensor("input", "FP32", digits().reshape(ROWS, 1, 8, 8))], "output"
    if model == "diabetes":
        return [Tensor("input", "FP32", diabetes_split().x_test[:ROWS])], "output"
    if model == "minilm":
        return [Tensor("text", "BYTES", np.array(TEXTS, dtype=object))], "embedding"
    if model == "similarity":
        return [
            Tensor("text_a", "BYTES", np.array(TEXTS, dtype=object)),
            Tensor("text_b", "BYTES", np.array(OTHER_TEXTS, dtype=object)),
        ], "score"
    assert model == "digits-image"
    pngs = np.empty(ROWS, dtype=object)
    pngs[:] = [render_png(x) for x in digits()]
    return [Tensor("image", "BYTES", pngs)], "output"


INFER_CASES = [
    ("digits", "1", "1"),
    ("digits", "2", "2"),
    ("digits", "", "2"),
    ("digits", "stable", "1"),
    ("digits-one-instance", "canary", "2"),
    ("digits-cnn", "", "1"),
    ("diabetes", "", "1"),
    ("minilm", "", "1"),
    ("similarity", "", "1"),
    ("digits-image", "", "1"),
]


@pytest.mark.parametrize(
    ("case", "version", "served"),
    INFER_CASES,
    ids=[f"{case}:{version or 'default'}" for case, version, _ in INFER_CASES],
)
def test_infer_equals_the_http_v2_route(
    grpc: grpcclient.InferenceServerClient,
    http: httpx.Client,
    case: str,
    version: str,
    served: str,
) -> None:
    model = case.removesuffix("-one-instance")
    tensors, output = example_case(case)
    http_version, expected = http_infer(http, model, tensors, version)
    assert http_version == served
    assert list(expected) == [output]
    wanted_type, wanted_shape, wanted = expected[output]

    every = grpc_infer(grpc, model, tensors, version)
    chosen = grpc_infer(grpc, model, tensors, version, output=output)
    for result in (every, chosen):
        response = result.get_response()
        assert (response.model_name, response.model_version) == (model, served)
        outputs = grpc_outputs(result)
        assert list(outputs) == [output]
        datatype, shape, values = outputs[output]
        assert (datatype, shape) == (wanted_type, wanted_shape)
        assert values.shape == tuple(wanted_shape)
        np.testing.assert_allclose(values, wanted.astype(values.dtype), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("version", "served"), [("1", "1"), ("2", "2"), ("canary", "2")])
def test_digits_over_grpc_equal_torch(
    grpc: grpcclient.InferenceServerClient, version: str, served: str
) -> None:
    x = digits(32)
    result = grpc_infer(grpc, "digits", [Tensor("input", "FP32", x)], version)
    assert result.get_response().model_version == served
    np.testing.assert_allclose(
        result.as_numpy("output"), in_process("digits", served, x), rtol=1e-4, atol=1e-6
    )


def test_similarity_over_grpc_is_the_dot_product_of_minilm_embeddings(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    """The two models agree with each other through gRPC too (not only with HTTP)."""
    a, b = TEXTS, OTHER_TEXTS
    embed = [
        grpc_infer(grpc, "minilm", [Tensor("text", "BYTES", np.array(t, dtype=object))])
        for t in (a, b)
    ]
    ea, eb = (e.as_numpy("embedding") for e in embed)
    assert ea.shape == (len(a), 384)
    result = grpc_infer(
        grpc,
        "similarity",
        [
            Tensor("text_a", "BYTES", np.array(a, dtype=object)),
            Tensor("text_b", "BYTES", np.array(b, dtype=object)),
        ],
    )
    np.testing.assert_allclose(result.as_numpy("score"), (ea * eb).sum(axis=1), atol=1e-5)


def test_one_instance_of_a_one_text_output_is_answered(
    toy_grpc: grpcclient.InferenceServerClient,
) -> None:
    """A request without the batch axis, and a ``string`` output of one element."""
    scores = Tensor("input", "FP32", np.array([0.0, 0.0, 9.0, 0.0], dtype=np.float32))
    ((datatype, shape, label),) = grpc_outputs(grpc_infer(toy_grpc, "labeller", [scores])).values()
    assert (datatype, shape) == ("BYTES", [])
    assert label.reshape(-1).tolist() == [b"class-2"]


def test_outputs_picks_one_of_two(
    toy_grpc: grpcclient.InferenceServerClient, toys: Running
) -> None:
    a = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    b = np.array([[0.5, 0.25], [-1.0, 8.0]], dtype=np.float32)
    tensors = [Tensor("a", "FP32", a), Tensor("b", "FP32", b)]

    both = grpc_outputs(grpc_infer(toy_grpc, "pair", tensors))
    assert list(both) == ["sum", "difference"]
    np.testing.assert_allclose(both["sum"][2], a + b)
    np.testing.assert_allclose(both["difference"][2], a - b)

    one = grpc_outputs(grpc_infer(toy_grpc, "pair", tensors, output="difference"))
    assert list(one) == ["difference"]
    assert one["difference"][:2] == ("FP32", [2, 2])
    np.testing.assert_allclose(one["difference"][2], a - b)

    with toys.server.client() as http:
        _, over_http = http_infer(http, "pair", tensors, output="difference")
    assert list(over_http) == ["difference"]
    np.testing.assert_allclose(one["difference"][2], over_http["difference"][2])


# --- 3. errors ----------------------------------------------------------------------------


BAD_CASES: dict[str, tuple[str, list[Tensor], dict[str, Any], str, list[str]]] = {
    "wrong-datatype": (
        "digits",
        [Tensor("input", "FP64", digits(2).astype(np.float64))],
        {},
        "StatusCode.INVALID_ARGUMENT",
        ["'input'", "FP64", "FP32"],
    ),
    "wrong-shape": (
        "digits",
        [Tensor("input", "FP32", digits(2)[:, :10].copy())],
        {},
        "StatusCode.INVALID_ARGUMENT",
        ["'input'", "[2, 10]", "64"],
    ),
    "wrong-input-name": (
        "similarity",
        [
            Tensor("text_a", "BYTES", np.array(["x"], dtype=object)),
            Tensor("txt", "BYTES", np.array(["y"], dtype=object)),
        ],
        {},
        "StatusCode.INVALID_ARGUMENT",
        ["'txt'"],
    ),
    "unknown-output": (
        "minilm",
        [Tensor("text", "BYTES", np.array(["x"], dtype=object))],
        {"output": "score"},
        "StatusCode.INVALID_ARGUMENT",
        ["'score'"],
    ),
    "unknown-model": (
        "nope",
        [Tensor("input", "FP32", digits(2))],
        {},
        "StatusCode.NOT_FOUND",
        ["'nope'"],
    ),
    "unknown-version": (
        "digits",
        [Tensor("input", "FP32", digits(2))],
        {"version": "9"},
        "StatusCode.NOT_FOUND",
        ["'digits'", "'9'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_a_bad_request_is_refused_with_its_status_and_fails_alone(
    grpc: grpcclient.InferenceServerClient, http: httpx.Client, case: str
) -> None:
    model, tensors, options, status, names = BAD_CASES[case]
    error = refused(lambda: grpc_infer(grpc, model, tensors, **options))
    assert error.status() == status, error
    message = error.message()
    assert all(name in message for name in names), message
    # NOTE: both protocols read a request through the same checks: the same words.
    assert message == http_error(http, model, tensors, **options)
    good_digits(grpc)


def test_the_classification_extension_is_refused_not_ignored(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    """Answering the whole tensor would give the client another datatype and shape than
    it asked for; the same refusal as over HTTP (test_v2_tritonclient)."""
    tensor = grpc_inputs([Tensor("input", "FP32", digits(2))])
    wanted = [grpcclient.InferRequestedOutput("output", class_count=3)]
    error = refused(lambda: grpc.infer("digits", tensor, outputs=wanted))
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "classification extension" in error.message()
    good_digits(grpc)


def test_an_input_in_contents_and_in_raw_input_contents_is_refused(
    grpc: grpcclient.InferenceServerClient, examples: Examples
) -> None:
    """The protocol forbids contents beside raw_input_contents; taking one silently would
    answer for data the client may not have meant."""
    x = digits(2)
    # NOTE: tritonclient's own messages: never registry.grpc_api's in this process
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    request.raw_input_contents.append(x.tobytes())
    with grpc_lib.insecure_channel(examples.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc_lib.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc_lib.StatusCode.INVALID_ARGUMENT
    assert "both in contents and in raw_input_contents" in str(caught.value.details())
    good_digits(grpc)


def test_bad_requests_in_a_concurrent_mix_fail_alone(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    x = digits(24)
    expected = in_process("digits", "2", x)

    def send(index: int) -> object:
        row = x[index // 2]
        tensor = Tensor("input", "FP32", row if index % 2 == 0 else row[:10].copy())
        try:
            return grpc_infer(grpc, "digits", [tensor]).as_numpy("output")
        except InferenceServerException as error:
            return error.status()

    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        answers = list(pool.map(send, range(2 * len(x))))
    assert answers[1::2] == ["StatusCode.INVALID_ARGUMENT"] * len(x)
    np.testing.assert_allclose(np.stack(answers[::2]), expected, rtol=1e-4, atol=1e-6)  # type: ignore[arg-type]


# --- 4. deadlines and cancellation --------------------------------------------------------


def test_a_deadline_shorter_than_the_forward_pass_is_deadline_exceeded(
    toy_grpc: grpcclient.InferenceServerClient, toys: Running
) -> None:
    with toys.server.client() as http:
        before = samples(http, "registry_requests", "sleepy")
        error = refused(
            lambda: grpc_infer(toy_grpc, "sleepy", [sleepy_input(1.0)], timeout_s=SLEEP_S / 5)
        )
        assert error.status() == "StatusCode.DEADLINE_EXCEEDED", error
        # NOTE: the one still in the model's queue or pass does not stop this one
        answer = grpc_infer(toy_grpc, "sleepy", [sleepy_input(2.0)], timeout_s=30)
        np.testing.assert_array_equal(answer.as_numpy("output"), [[2.0, 0, 0, 0]])
        wait_for(lambda: in_flight(http, "sleepy") == 0, "the sleepy requests to end")
        after = samples(http, "registry_requests", "sleepy")
    assert toy_grpc.is_server_ready()
    # NOTE: both calls are counted; which status the late one gets is a race between the
    # server's own timeout and grpc's deadline (see the cancellation test below).
    counted = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert sum(counted.values()) == 2, counted


def test_a_call_the_client_cancels_is_not_counted_as_answered(
    toy_grpc: grpcclient.InferenceServerClient, toys: Running
) -> None:
    outcome: queue.Queue[tuple[object, object]] = queue.Queue()
    with toys.server.client() as http:
        wait_for(lambda: in_flight(http, "sleepy") == 0, "sleepy to be idle")
        before = samples(http, "registry_requests", "sleepy")
        call = toy_grpc.async_infer(
            "sleepy",
            grpc_inputs([sleepy_input(3.0)]),
            callback=lambda result, error: outcome.put((result, error)),
            client_timeout=30,
        )
        wait_for(lambda: in_flight(http, "sleepy") == 1, "the call to hold sleepy")
        call.cancel()
        result, error = outcome.get(timeout=30)
        assert result is None
        assert isinstance(error, InferenceServerException)
        assert error.status() == "StatusCode.CANCELLED", error
        wait_for(lambda: in_flight(http, "sleepy") == 0, "the cancelled call to unwind")
        after = samples(http, "registry_requests", "sleepy")
    counted = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert counted.get("200", 0) == 0, f"a cancelled call counted as answered: {counted}"


# --- 5. reloads under gRPC load -----------------------------------------------------------


def test_reloads_under_grpc_load_fail_no_call(toys: Running, toys_dir: Path) -> None:
    weights = toys_dir / "weights"
    manifests = [toy_models(weights, "1"), toy_models(weights, "2")]
    results: list[tuple[str, Array, Array]] = []
    failures: list[str] = []
    reloads: list[httpx.Response] = []
    done = threading.Event()
    lock = threading.Lock()
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(LOAD_REQUESTS, len(X))).astype(np.float32)

    def reloader() -> None:
        with toys.server.client() as client:
            for cycle in range(RELOADS):
                time.sleep(0.1)
                replace_manifest(toys_dir, manifests[(cycle + 1) % 2])
                reloads.append(client.post("/admin/reload", headers=AUTH))
        done.set()

    def worker(offset: int) -> None:
        client = toys.client()
        try:
            sent = offset
            while not done.is_set() or len(results) + len(failures) < LOAD_REQUESTS:
                row = rows[sent % LOAD_REQUESTS]
                sent += LOAD_CLIENTS
                try:
                    result = grpc_infer(client, "flip", [Tensor("input", "FP32", row)])
                except InferenceServerException as error:
                    with lock:
                        failures.append(f"{error.status()}: {error.message()}")
                    continue
                with lock:
                    results.append(
                        (result.get_response().model_version, row, result.as_numpy("output"))
                    )
        finally:
            client.close()

    with ThreadPoolExecutor(LOAD_CLIENTS + 1) as pool:
        futures = [pool.submit(worker, i) for i in range(LOAD_CLIENTS)]
        futures.append(pool.submit(reloader))
        for future in futures:
            future.result()

    print(  # noqa: T201 (visible with -s)
        f"\ngRPC reload under load: {len(results) + len(failures)} calls from {LOAD_CLIENTS} "
        f"clients, {len(reloads)} reloads, {len(failures)} failed"
    )
    assert failures == []
    assert [r.status_code for r in reloads] == [200] * RELOADS, [r.text for r in reloads]
    assert all(len(r.json()["reloaded"]) + len(r.json()["added"]) == 1 for r in reloads)
    assert len(results) >= LOAD_REQUESTS
    by_version: dict[str, list[tuple[Array, Array]]] = {}
    for version, row, output in results:
        by_version.setdefault(version, []).append((row, output))
    assert set(by_version) == {"1", "2"}
    for version, answers in by_version.items():
        inputs = np.stack([row for row, _ in answers])
        got = np.stack([output for _, output in answers])
        np.testing.assert_allclose(got, affine_outputs(inputs, int(version)), rtol=1e-5, atol=1e-6)


# --- 6. shutdown --------------------------------------------------------------------------


def sigterm_server(directory: Path, models: list[dict[str, Any]]) -> Running:
    write_manifest(directory, models)
    port = free_port()
    server = start(
        directory, ["--manifest", str(directory / "models.yaml"), "--grpc-port", str(port)]
    )
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return Running(server, f"127.0.0.1:{port}")


def test_sigterm_drains_grpc_and_http_calls_in_flight_and_refuses_new_grpc_calls(
    tmp_path: Path,
) -> None:
    """One call in flight on each door when SIGTERM comes: new gRPC calls are refused
    (``UNAVAILABLE``) while both still drain, HTTP stops listening, both calls are
    answered, and gRPC stops before the models are released."""
    weights = tmp_path / "weights"
    models = [echo_model(weights, name, "Sleepy", seconds=3.0) for name in ("slow_g", "slow_h")]
    for model in models:
        model["warmup"] = False
    running = sigterm_server(tmp_path, [*models, affine_model(weights, "flip", ("1",))])
    server = running.server
    client = running.client()
    try:
        with ThreadPoolExecutor(2) as pool, server.client() as http:
            on_grpc = pool.submit(grpc_infer, client, "slow_g", [sleepy_input(7.0)], "", None, 60)
            on_http = pool.submit(
                http.post, "/models/slow_h/predict", json={"inputs": [5, 0, 0, 0]}
            )
            with server.client() as watcher:
                wait_for(
                    lambda: in_flight(watcher, "slow_g") == in_flight(watcher, "slow_h") == 1,
                    "both calls to be in flight",
                )
            server.process.send_signal(signal.SIGTERM)
            # NOTE: a new channel each time, so that a connection is attempted, not reused.
            # A call that reaches the server in the very instant its gRPC side begins to
            # stop is CANCELLED by gRPC core, which no handler of ours sees (grpc/grpc#41785):
            # one such may come before the refusal every later call gets.
            refusals: list[str] = []
            while not on_grpc.done() and "StatusCode.UNAVAILABLE" not in refusals:
                fresh = running.client()
                try:
                    fresh.is_server_live(client_timeout=5)
                except InferenceServerException as error:
                    refusals.append(error.status())
                finally:
                    fresh.close()
                time.sleep(0.02)
            refused_while_both_drained = not on_grpc.done() and not on_http.done()

            def http_closed() -> bool:
                try:
                    with httpx.Client(timeout=1) as probe:
                        probe.get(f"{server.url}/healthz")
                except httpx.TransportError:
                    return True
                return False

            wait_for(http_closed, "uvicorn to stop listening")
            fresh = running.client()
            try:
                answered = grpc_infer(
                    fresh, "flip", [Tensor("input", "FP32", np.array(X, np.float32))], timeout_s=5
                )
                late = f"answered by flip:{answered.get_response().model_version}"
            except InferenceServerException as error:
                late = error.status()
            finally:
                fresh.close()
            http_still_draining = not on_http.done()
            answer, drained = on_grpc.result(), on_http.result()
        code = server.stop()
        after = refused(lambda: client.infer("slow_g", grpc_inputs([sleepy_input(1.0)])))
    finally:
        client.close()
        server.stop()
    assert refusals[-1:] == ["StatusCode.UNAVAILABLE"], refusals
    assert set(refusals) <= {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}, refusals
    assert refused_while_both_drained, "new calls were refused only once a drain ended"
    assert http_still_draining, "precondition: the HTTP request was still draining"
    assert late == "StatusCode.UNAVAILABLE", f"a gRPC call after SIGTERM was {late}"
    np.testing.assert_array_equal(answer.as_numpy("output"), [[7.0, 0, 0, 0]])
    assert drained.status_code == 200
    assert code == 0, server.output()
    assert after.status() == "StatusCode.UNAVAILABLE", after
    log = server.output()
    assert "gRPC stopped" in log
    assert log.index("gRPC stopped") < log.index("every model released"), log
    assert "Traceback" not in log, log


# --- the log ------------------------------------------------------------------------------


def test_the_examples_server_logged_no_traceback(examples: Examples) -> None:
    log = examples.server.output()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    assert " CRITICAL " not in log, log
    assert "gRPC (Open Inference Protocol) on 127.0.0.1:" in log


def test_a_grpc_call_is_traced_under_the_callers_trace(
    toy_grpc: grpcclient.InferenceServerClient, collector: Sink
) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    row = np.asarray([[0.5, -1.0, 2.0, 0.25]], np.float32)
    tensor = grpcclient.InferInput("input", list(row.shape), "FP32")
    tensor.set_data_from_numpy(row)

    toy_grpc.infer("flip", [tensor], headers={"traceparent": f"00-{trace_id}-{parent}-01"})

    deadline = time.monotonic() + 30
    names: set[str] = set()
    while time.monotonic() < deadline:
        with collector._lock:
            mine = [span for span in collector.kept if span.trace_id.hex() == trace_id]
        names = {span.name for span in mine}
        if {"inference.GRPCInferenceService/ModelInfer", "forward"} <= names:
            break
        time.sleep(0.05)
    assert {"inference.GRPCInferenceService/ModelInfer", "decode", "forward", "encode"} <= names
    (call,) = [s for s in mine if s.name == "inference.GRPCInferenceService/ModelInfer"]
    assert call.parent_span_id.hex() == parent
    attributes = {a.key: a.value for a in call.attributes}
    assert attributes["registry.model"].string_value == "flip"
    assert attributes["registry.version"].string_value == "1"
    assert attributes["rpc.grpc.status_code"].int_value == 0
    assert attributes["registry.status"].int_value == 200
    assert all(s.parent_span_id == call.span_id for s in mine if s.name in ("decode", "encode"))
