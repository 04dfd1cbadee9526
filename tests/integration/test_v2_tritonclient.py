"""The V2 routes against NVIDIA's own client, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton

from registry.examples.data import digits_split
from tests.integration.server import REPOSITORY, Server, serving
from tests.integration.test_end_to_end import in_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--manifest", str(REPOSITORY / "models.yaml")]
    with serving(tmp_path_factory.mktemp("v2"), args) as running:
        yield running


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
