"""The V2 routes against NVIDIA's own client, over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from registry.examples.data import digits_split
from tests.integration.conftest import Examples
from tests.integration.server import Server
from tests.integration.test_end_to_end import in_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(examples: Examples) -> Server:
    return examples.server


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary-extension"])
def test_tritonclient_infers_digits(server: Server, binary: bool) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits", "2")
        metadata = client.get_model_metadata("digits")
        assert metadata["inputs"][0]["shape"] == [-1, 64]
        x = digits_split().x_test[:32]
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = triton.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("digits", [tensor], model_version="canary", outputs=[wanted])
        outputs = result.as_numpy("output")
    finally:
        client.close()
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(outputs, in_process("digits", "2", x), rtol=1e-4, atol=1e-6)


def test_the_classification_extension_is_refused_not_ignored(server: Server) -> None:
    """Not offered (``GET /v2`` does not list it): answering the whole tensor instead would
    give the client another datatype and shape than it asked for."""
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert "classification" not in client.get_server_metadata()["extensions"]
        tensor = triton.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(digits_split().x_test[:1])
        wanted = triton.InferRequestedOutput("output", class_count=3)
        with pytest.raises(InferenceServerException, match="classification extension"):
            client.infer("digits", [tensor], outputs=[wanted])
    finally:
        client.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_may_compress_its_requests(server: Server, algorithm: str) -> None:
    """``request_compression_algorithm``: the body inflated before it is read, JSON and
    the binary extension alike (whose header length counts the inflated JSON)."""
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    x = digits_split().x_test[:4]
    try:
        for binary in (False, True):
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            result = client.infer(
                "digits", [tensor], model_version="2", request_compression_algorithm=algorithm
            )
            np.testing.assert_allclose(
                result.as_numpy("output"), in_process("digits", "2", x), rtol=1e-4, atol=1e-6
            )
    finally:
        client.close()
