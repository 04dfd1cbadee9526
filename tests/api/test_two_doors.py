"""One predict implementation behind two doors: every answer is the same through both.

The fast path (``REGISTRY_FAST_PATH=true``) serves the predict routes by calling their own
dependencies and endpoints without FastAPI's per-request solving; with it off, FastAPI's
router does. A matrix of good and bad requests goes through an app of each kind, and the
status, every header but the request id, and the body must be equal byte for byte. So an
edit to the route is an edit to what serves, whichever door is open.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

import registry.serving
from registry.api.routes import predict
from registry.app import create_app
from registry.model import LoadedModel
from registry.settings import Settings
from tests.factories import TRIPWIRE, affine_model, echo_model, model_entry, write_manifest
from tests.support import call_app, make_settings, post_scope, status_of, wait_ready

X = [0.5, -1.0, 2.0, 0.25]
BATCH = [X, [1.0, 1.0, 1.0, 1.0]]
DOORS = ("fast-path", "fastapi-path")
LIMIT = 1024  # bytes of body
Answer = tuple[int, list[tuple[str, str]], bytes]


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def door_settings(root: Path, **overrides: Any) -> dict[str, Settings]:
    settings = make_settings(root, **overrides)
    return {door: settings.model_copy(update={"fast_path": door == DOORS[0]}) for door in DOORS}


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """The same manifest and settings served twice: fast path on, and off."""
    root = tmp_path_factory.mktemp("doors")
    weights = root / "weights"
    sleepy = echo_model(weights, "sleepy", "Sleepy", seconds=0.6)
    sleepy["warmup"] = False
    busy = echo_model(weights, "busy", "Sleepy", seconds=0.6)
    busy |= {"warmup": False, "batching": {"max_batch_size": 1, "max_queue": 1}}
    broken = model_entry("broken", [{"version": "1", "format": "torchscript", "path": "no.pt"}])
    lin = affine_model(
        weights,
        "lin",
        ("1", "2"),
        aliases={"stable": "1"},
        output={"labels": ["a", "b", "c"]},
        batching={"max_batch_size": 4},
    )
    write_manifest(root, [lin, echo_model(weights, "trip", "Tripwire"), sleepy, busy, broken])
    settings = door_settings(
        root,
        max_body_bytes=LIMIT,
        request_timeout_s=0.3,
        body_timeout_s=0.3,
        strict_startup=False,
    )
    with (
        TestClient(create_app(settings[DOORS[0]])) as fast,
        TestClient(create_app(settings[DOORS[1]])) as slow,
    ):
        wait_ready(fast)
        wait_ready(slow)
        yield {DOORS[0]: fast, DOORS[1]: slow}


ONE = orjson.dumps({"inputs": X})


@dataclass(frozen=True)
class Case:
    path: str
    status: int
    content: bytes | Callable[[], Iterator[bytes]] = ONE
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    routed: bool = True  # False: answered before any route's code runs


def raw(array: list[Any], shape: str | None, status: int = 200) -> Case:
    headers = {"content-type": "application/octet-stream"}
    if shape is not None:
        headers["x-shape"] = shape
    return Case("/models/lin/predict", status, np.asarray(array, np.float32).tobytes(), headers)


def chunks(body: bytes) -> Callable[[], Iterator[bytes]]:
    """A body sent chunked: no declared length, so the limit counts it as it streams."""

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    return chunked


JSON = {"content-type": "application/json"}
TOO_BIG = orjson.dumps({"inputs": [0.0] * 400})
CASES = {
    # answered
    "json-one": Case("/models/lin/predict", 200, headers=JSON),
    "json-batch": Case("/models/lin/predict", 200, orjson.dumps({"inputs": BATCH})),
    "json-charset": Case(
        "/models/lin/predict", 200, headers={"content-type": "application/json; charset=utf-8"}
    ),
    "no-content-type": Case("/models/lin/predict", 200),
    "version-number": Case("/models/lin/versions/1/predict", 200),
    "version-alias": Case("/models/lin/versions/stable/predict", 200),
    "raw-one": raw(X, "4"),
    "raw-batch": raw(BATCH, "2,4"),
    "npy": Case(
        "/models/lin/predict",
        200,
        npy(np.asarray(BATCH, np.float64)),
        {"content-type": "application/x-npy"},
    ),
    "accept-raw": Case("/models/lin/predict", 200, headers={"accept": "application/octet-stream"}),
    "accept-npy": Case(
        "/models/lin/versions/2/predict", 200, headers={"accept": "application/x-npy"}
    ),
    "accept-q": Case(
        "/models/lin/predict", 200, headers={"accept": "application/json;q=0.1, application/*"}
    ),
    "accept-any": Case("/models/lin/predict", 200, headers={"accept": "*/*"}),
    "accept-html": Case("/models/lin/predict", 200, headers={"accept": "text/html"}),
    # refused
    "400-not-json": Case("/models/lin/predict", 400, b'{"inputs": [1,', JSON),
    "400-empty": Case("/models/lin/predict", 400, b"", JSON),
    "404-model": Case("/models/ghost/predict", 404),
    "404-version": Case("/models/lin/versions/9/predict", 404),
    "404-no-route": Case("/models/lin/versions/1/2/predict", 404, routed=False),
    "404-empty-name": Case("/models//predict", 404, routed=False),
    "405-get": Case("/models/lin/predict", 405, b"", method="GET", routed=False),
    "307-slash": Case("/models/lin/predict/", 307, routed=False),
    "413-declared": Case("/models/lin/predict", 413, TOO_BIG, JSON, routed=False),
    "413-chunked": Case("/models/lin/predict", 413, chunks(TOO_BIG), JSON),
    "413-unknown-model": Case("/models/ghost/predict", 413, TOO_BIG, JSON, routed=False),
    "413-rows": Case("/models/lin/predict", 413, orjson.dumps({"inputs": [X] * 5})),
    "415": Case("/models/lin/predict", 415, b"<x/>", {"content-type": "text/xml"}),
    "422-shape": Case("/models/lin/predict", 422, orjson.dumps({"inputs": [1, 2]})),
    "422-no-x-shape": raw(X, None, 422),
    "422-bad-x-shape": raw(X, "4,a", 422),
    "422-npy": Case(
        "/models/lin/predict", 422, b"\x93NUMPY junk", {"content-type": "application/x-npy"}
    ),
    "500-model-failed": Case("/models/trip/predict", 500, orjson.dumps({"inputs": [TRIPWIRE] * 4})),
    "503-model-unavailable": Case("/models/broken/predict", 503),
    "504": Case("/models/sleepy/predict", 504),
}


def answer_of(response: httpx2.Response) -> Answer:  # NOTE: the TestClient's httpx
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "x-request-id"]
    return response.status_code, headers, response.content


def send(client: TestClient, case: Case) -> Answer:
    content = case.content() if callable(case.content) else case.content
    response = client.request(
        case.method, case.path, content=content, headers=case.headers, follow_redirects=False
    )
    assert response.headers["x-request-id"]
    return answer_of(response)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_both_doors_give_the_same_answer(
    doors: dict[str, TestClient], case: Case, solved: list[object]
) -> None:
    fast = send(doors["fast-path"], case)
    assert not set(solved) & set(predict.ENDPOINTS), "the fast path left it to FastAPI"
    fastapi_door = send(doors["fastapi-path"], case)
    assert fast[0] == case.status, fast
    assert fast == fastapi_door
    routed = bool(set(solved) & set(predict.ENDPOINTS))
    assert routed == case.routed, "FastAPI's door solved what it should not have, or not"


def test_an_unexpected_exception_is_the_same_500_through_both_doors(
    doors: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug, not a domain error: the JSON envelope, the request id, counted, logged."""

    async def broken(*_: object, **__: object) -> object:
        raise RuntimeError("a bug in the predict code")

    monkeypatch.setattr(registry.serving, "predict", broken)
    answers = {}
    for door, client in doors.items():
        before = requests_total(client, "lin", "2", 500)
        response = client.post(
            "/models/lin/predict", json={"inputs": X}, headers={"x-request-id": f"bug-{door}"}
        )
        assert response.headers["x-request-id"] == f"bug-{door}"
        assert requests_total(client, "lin", "2", 500) == before + 1
        answers[door] = answer_of(response)
        logged = [r for r in caplog.records if getattr(r, "request_id", None) == f"bug-{door}"]
        assert any(r.exc_info and "a bug in the predict code" in str(r.exc_info[1]) for r in logged)
    status, _, body = answers["fast-path"]
    assert status == 500
    assert orjson.loads(body) == {"error": {"code": "internal", "message": "internal server error"}}
    assert answers["fast-path"] == answers["fastapi-path"]


def requests_total(client: TestClient, model: str, version: str, status: int) -> float:
    labels = {"model": model, "version": version, "status": str(status)}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "registry_requests_total" and sample.labels == labels:
                return float(sample.value)
    return 0.0


def without_request_id(sent: list[Message]) -> list[Message]:
    messages = []
    for message in sent:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message["headers"] if k != b"x-request-id"]
            message = {**message, "headers": headers}
        messages.append(message)
    return messages


Receive = Callable[[], Awaitable[Message]]


def stalled() -> Receive:
    """Ten bytes of body, then nothing more: the body deadline runs out."""
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"inputs":', "more_body": True}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def hangs_up() -> Receive:
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"inputs": [1.0,', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    return receive


@pytest.mark.parametrize(
    ("receive", "status"), [(stalled, 408), (hangs_up, 499)], ids=["408-stalled", "499-gone"]
)
@pytest.mark.parametrize("path", ["/models/lin/predict", "/models/ghost/versions/1/predict"])
def test_slow_and_vanishing_bodies_are_answered_alike(
    doors: dict[str, TestClient], receive: Callable[[], Receive], status: int, path: str
) -> None:
    sent = {door: call_app(client, path, b"x" * 100, receive()) for door, client in doors.items()}
    assert status_of(sent["fast-path"]) == status
    assert without_request_id(sent["fast-path"]) == without_request_id(sent["fastapi-path"])


def test_queue_full_is_the_same_503_through_both_doors(
    doors: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``busy`` runs one request and queues one; a third is refused at once."""
    answers = {}
    for door, client in doors.items():
        busy: LoadedModel = client.app_state["registry"].table["busy"].versions["1"].model
        began = passes_begun(busy, monkeypatch)
        assert client.portal is not None
        third = client.portal.call(burst, client.app, client.app_state, busy, began)
        answers[door] = without_request_id(third)
    assert status_of(answers["fast-path"]) == 503
    assert b"queue_full" in answers["fast-path"][-1]["body"]
    assert answers["fast-path"] == answers["fastapi-path"]


def passes_begun(model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set as each of ``model``'s forward passes begins, on its inference thread."""
    began = threading.Event()
    module = model.module

    def signalled(*inputs: torch.Tensor) -> object:
        began.set()
        return module(*inputs)

    monkeypatch.setattr(model, "module", signalled)
    return began


async def burst(
    app: Any, state: dict[str, Any], busy: LoadedModel, began: threading.Event
) -> list[Message]:
    """Three requests to ``busy``, each sent once the one before runs or waits in the
    queue: what the third is answered."""
    body = orjson.dumps({"inputs": X})
    first = asyncio.ensure_future(asgi_post(app, state, "/models/busy/predict", body))
    assert await asyncio.to_thread(began.wait, 10)  # NOTE: its forward pass is running
    second = asyncio.ensure_future(asgi_post(app, state, "/models/busy/predict", body))
    deadline = time.monotonic() + 10
    while busy.queue_depth < 1:  # NOTE: until this one waits in the queue
        assert time.monotonic() < deadline, "the second request never queued"
        await asyncio.sleep(0.001)
    third = await asgi_post(app, state, "/models/busy/predict", body)
    await asyncio.gather(first, second)
    return third


async def asgi_post(app: Any, state: dict[str, Any], path: str, body: bytes) -> list[Message]:
    scope = post_scope(path, body, state)
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def collect(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, collect)
    return sent


def test_a_model_still_loading_is_the_same_503_through_both_doors(
    tmp_path: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_manifest(tmp_path, [echo_model(weights, "slow", "SlowToBuild", seconds=1.5)])
    answers = {}
    for door, settings in door_settings(tmp_path).items():
        with TestClient(create_app(settings)) as client:
            response = client.post("/models/slow/predict", json={"inputs": X})
            answers[door] = answer_of(response)
    assert answers["fast-path"][0] == 503
    assert orjson.loads(answers["fast-path"][2])["error"]["code"] == "model_loading"
    assert answers["fast-path"] == answers["fastapi-path"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
