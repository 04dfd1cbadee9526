"""Slow and vanishing clients, through both doors: the ASGI app driven message by message.

``TestClient`` sends a body in one go; these tests call the application on the client's
own event loop with a scripted ``receive``, so they can look at the registry between two
chunks of a body, stall a body, or hang up halfway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message

from registry.app import create_app
from registry.core import ModelRegistry
from tests.factories import LIN_INPUT, affine_model, lin_routes, write_manifest
from tests.support import call_app, make_settings, status_of, wait_ready

X = LIN_INPUT
ROUTES = lin_routes("1")
NATIVE, V2 = ROUTES[0][1], ROUTES[2][1]
ROUTE_IDS = ["predict", "predict-version", "v2-infer", "v2-infer-version"]
Receive = Callable[[], Awaitable[Message]]


@pytest.fixture
def slow_client(tmp_path: Path, weights: Path, fast_path: bool) -> Iterator[TestClient]:
    """Bodies must arrive within 0.2 s and hold at most 256 bytes."""
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1", "2"))])
    settings = make_settings(tmp_path, fast_path=fast_path, body_timeout_s=0.2, max_body_bytes=256)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def headers_of(sent: list[Message]) -> dict[bytes, bytes]:
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    return dict(start["headers"])


def json_of(sent: list[Message]) -> Any:
    return json.loads(
        b"".join(m.get("body", b"") for m in sent if m["type"] != "http.response.start")
    )


def leases(registry: ModelRegistry) -> int:
    return sum(
        slot.model.leases
        for entry in registry.table.values()
        for slot in entry.versions.values()
        if slot.model is not None
    )


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=ROUTE_IDS)
def test_no_version_is_leased_until_the_whole_body_is_in(
    slow_client: TestClient, path: str, body: bytes
) -> None:
    registry: ModelRegistry = slow_client.app_state["registry"]
    chunks = [body[:10], body[10:20], body[20:]]
    seen: list[int] = []

    async def receive() -> Message:
        seen.append(leases(registry))
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    sent = call_app(slow_client, path, body, receive)
    assert status_of(sent) == 200, json_of(sent)
    assert seen == [0, 0, 0]
    assert leases(registry) == 0


@pytest.mark.parametrize(("path", "body"), [*ROUTES, ("/models/ghost/predict", NATIVE)])
def test_a_stalled_body_is_408_and_the_connection_closes(
    slow_client: TestClient, path: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body[:10], "more_body": True}
        await asyncio.Event().wait()  # the client never sends the rest
        raise AssertionError("unreachable")

    sent = call_app(slow_client, path, body, receive)
    assert status_of(sent) == 408
    assert headers_of(sent)[b"connection"] == b"close"
    error = json_of(sent)["error"]
    if path.startswith("/v2/"):
        assert "did not arrive within 0.2 s" in error
    else:
        assert error["code"] == "request_timeout"
        assert error["body_timeout_s"] == 0.2
    assert leases(slow_client.app_state["registry"]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_stalled_first_read_is_408_too(slow_client: TestClient) -> None:
    """Headers in, not a byte of body: the very first ``receive`` is under the deadline."""

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    sent = call_app(slow_client, "/models/lin/predict", NATIVE, receive)
    assert status_of(sent) == 408


def test_a_body_that_keeps_coming_is_cut_at_the_deadline(slow_client: TestClient) -> None:
    """A byte every 20 ms never stalls for long, yet the whole body is late: 408."""

    async def receive() -> Message:
        await asyncio.sleep(0.02)
        return {"type": "http.request", "body": b" ", "more_body": True}

    sent = call_app(slow_client, "/v2/models/lin/infer", V2, receive)
    assert status_of(sent) == 408


def test_body_errors_come_before_lookup_errors_through_either_door(
    slow_client: TestClient,
) -> None:
    """An unknown model with an oversized body is 413, whichever door serves it."""
    big = {"inputs": [0.0] * 100}
    assert slow_client.post("/models/ghost/predict", json=big).status_code == 413
    assert slow_client.post("/v2/models/ghost/infer", json=big).status_code == 413
    assert slow_client.post("/models/ghost/predict", json={"inputs": X}).status_code == 404


def test_fast_bodies_after_slow_ones_are_served(slow_client: TestClient) -> None:
    """The shared deadline timer keeps working after reads that ended either way."""

    async def stall() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    for _ in range(3):
        assert status_of(call_app(slow_client, "/models/lin/predict", NATIVE, stall)) == 408
        response = slow_client.post("/models/lin/predict", content=NATIVE)
        assert response.status_code == 200
