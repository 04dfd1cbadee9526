"""Hostile requests beyond the tensor codecs: names, nesting, duplicate keys, bodies.

Each gets a 4xx in its protocol's error shape through both doors, and the server keeps
answering good requests afterwards.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient

from registry.api.encoding import Inflater
from registry.api.limits import framing
from registry.errors import PayloadTooLarge

GOOD = [0.5, -1.0, 2.0, 0.25]


def nested_json(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"1.0" + b"]" * depth + b"}"


def assert_error(response: object, status: int, v2: bool = False) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert isinstance(error, str) if v2 else {"code", "message"} <= set(error)


@pytest.mark.parametrize(
    "path",
    [
        "/models/..%2F..%2Fetc%2Fpasswd/predict",
        "/models/%2E%2E/predict",
        "/models/lin%00/predict",
        "/models/lin/versions/..%2F1/predict",
        "/models/lin/versions/%2E%2E/predict",
        "/models/" + "a" * 5000 + "/predict",
    ],
)
def test_path_like_names_are_not_found(client: TestClient, path: str) -> None:
    response = client.post(path, json={"inputs": GOOD})
    assert response.status_code == 404, response.text
    assert client.post("/models/lin/predict", json={"inputs": GOOD}).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/v2/models/..%2Flin/infer", "/v2/models/lin/versions/%2E%2E/infer", "/v2/models/%00/ready"],
)
def test_path_like_names_are_not_found_under_v2(client: TestClient, path: str) -> None:
    body = {"inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "data": GOOD}]}
    response = client.post(path, json=body) if path.endswith("infer") else client.get(path)
    assert_error(response, 404, v2=True)


@pytest.mark.parametrize(("depth", "status"), [(64, 422), (300, 422), (5000, 400)])
def test_deeply_nested_inputs(client: TestClient, depth: int, status: int) -> None:
    """Deeper than orjson reads is invalid JSON; anything it reads is the wrong shape."""
    headers = {"content-type": "application/json"}
    response = client.post("/models/lin/predict", content=nested_json(depth), headers=headers)
    assert_error(response, status)


def test_duplicate_keys_take_the_last_value_on_both_routes(client: TestClient) -> None:
    """orjson keeps the last of repeated keys; the answer is that value's, never a 5xx."""
    headers = {"content-type": "application/json"}
    last_good = b'{"inputs": "not numbers", "inputs": [0.5, -1.0, 2.0, 0.25]}'
    first_good = b'{"inputs": [0.5, -1.0, 2.0, 0.25], "inputs": "not numbers"}'
    expected = client.post("/models/lin/predict", json={"inputs": GOOD}).json()
    assert client.post("/models/lin/predict", content=last_good, headers=headers).json() == (
        expected
    )
    assert_error(client.post("/models/lin/predict", content=first_good, headers=headers), 422)
    v2_twice = (
        b'{"inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4],'
        b' "data": [0.5, -1.0, 2.0, 0.25]}], "inputs": 7}'
    )
    assert_error(client.post("/v2/models/lin/infer", content=v2_twice, headers=headers), 422, True)


def test_chunked_bodies_over_the_limit_are_413_on_every_route(
    small_body_client: TestClient,
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b"[1.0, 2.0, 3.0, 4.0]," * 2

    native = small_body_client.post("/models/lin/predict", content=chunks())
    assert_error(native, 413)
    v2 = small_body_client.post("/v2/models/lin/infer", content=chunks())
    assert_error(v2, 413, v2=True)
    assert small_body_client.post("/models/lin/predict", json={"inputs": GOOD}).status_code == 200


@pytest.mark.parametrize("value", ["²", "٣", "1e3", "-1"])
def test_a_content_length_that_is_not_ascii_digits_is_not_trusted(value: str) -> None:
    """No server error for a header Python's ``isdigit`` accepts and ``int`` refuses."""
    scope = {"type": "http", "headers": [(b"content-length", value.encode())]}
    assert framing(scope) == (None, None)
    counted = {"type": "http", "headers": [(b"content-length", b"12")]}
    assert framing(counted) == (12, None)  # NOTE: the control: a count is trusted


# --- compressed bodies ---------------------------------------------------------------------


def compressed(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body)
    return zlib.compress(body)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_body_is_read_inflated_through_either_route(
    client: TestClient, coding: str
) -> None:
    """What tritonclient's ``request_compression_algorithm`` sends (an integration test
    sends it with tritonclient itself)."""
    native = orjson.dumps({"inputs": GOOD})
    v2 = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "data": GOOD}]}
    )
    headers = {"content-type": "application/json", "content-encoding": coding}
    plain = client.post("/models/lin/predict", json={"inputs": GOOD}).json()
    answer = client.post("/models/lin/predict", content=compressed(native, coding), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == plain
    answer = client.post("/v2/models/lin/infer", content=compressed(v2, coding), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == plain["outputs"]


def test_a_body_that_inflates_past_the_limit_is_413(small_body_client: TestClient) -> None:
    """133 bytes sent, under the 200-byte limit, that would inflate to 100 kB."""
    bomb = gzip.compress(b" " * 100_000)
    assert len(bomb) < 200
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    for path, v2 in (("/models/lin/predict", False), ("/v2/models/lin/infer", True)):
        assert_error(small_body_client.post(path, content=bomb, headers=headers), 413, v2)
    assert small_body_client.post("/models/lin/predict", json={"inputs": GOOD}).status_code == 200


def test_a_bomb_is_never_inflated_past_the_limit() -> None:
    """64 MB of zeros in 65 kB: inflation stops one byte past the 1 MB limit."""
    inflater = Inflater("gzip", limit=1 << 20)
    with pytest.raises(PayloadTooLarge):
        inflater.feed(gzip.compress(bytes(64 << 20)), last=True)
    assert inflater.inflated == (1 << 20) + 1


def test_a_body_inflates_whole_across_chunks() -> None:
    body = orjson.dumps({"inputs": GOOD * 1000})
    sent = zlib.compress(body)
    inflater = Inflater("deflate", limit=len(body))
    pieces = [
        inflater.feed(sent[i : i + 7], last=i + 7 >= len(sent)) for i in range(0, len(sent), 7)
    ]
    assert b"".join(pieces) == body


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not gzip at all", "not valid gzip"),
        (gzip.compress(b'{"inputs": [1, 2, 3, 4]}')[:-6], "ends before its gzip data does"),
        (gzip.compress(b"{}") + b"trailing", "goes on past the end"),
    ],
    ids=["garbage", "truncated", "trailing"],
)
def test_a_broken_compressed_body_is_400_naming_why(
    client: TestClient, body: bytes, fragment: str
) -> None:
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    answer = client.post("/models/lin/predict", content=body, headers=headers)
    assert_error(answer, 400)
    assert fragment in answer.json()["error"]["message"]
    assert client.post("/models/lin/predict", json={"inputs": GOOD}).status_code == 200


def test_a_coding_the_server_does_not_read_is_415_naming_those_it_does(client: TestClient) -> None:
    headers = {"content-type": "application/json", "content-encoding": "br"}
    answer = client.post(
        "/models/lin/predict", content=orjson.dumps({"inputs": GOOD}), headers=headers
    )
    assert_error(answer, 415)
    assert answer.json()["error"]["supported"] == ["gzip", "deflate"]
    identity = {"content-type": "application/json", "content-encoding": "identity"}
    plain = client.post(
        "/models/lin/predict", content=orjson.dumps({"inputs": GOOD}), headers=identity
    )
    assert plain.status_code == 200, plain.text
