"""Helpers shared by tests: settings, readiness, and a started registry always closed."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.types import Message, Receive

from registry import heap
from registry.budget import MemoryBudget
from registry.core import ModelRegistry
from registry.repository import ModelRepository
from registry.settings import Settings
from registry.tasks import Background
from registry.threads import WideThreads


@dataclass(frozen=True)
class Running:
    """What the application's lifespan holds: the registry, its repository, their tasks."""

    background: Background
    registry: ModelRegistry
    repository: ModelRepository


Start = Callable[[Settings], Awaitable[Running]]
"""The ``start`` fixture: starts a registry that is closed when the test ends."""


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """Start loading ``settings``' manifest; close everything on the way out, failed or not."""
    background = Background()
    budget = MemoryBudget(settings.memory_budget_bytes)
    # NOTE: the permits as the lifespan makes them (``registry.threads``)
    wide = WideThreads(settings.intra_op_threads)
    registry = ModelRegistry(background, budget, wide=wide, after_release=heap.trim)
    repository = ModelRepository(settings, registry, background)
    try:
        await repository.start()
        yield Running(background, registry, repository)
    finally:
        await repository.close()
        await registry.close()
        await background.close()


def make_settings(directory: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "manifest": directory / "models.yaml",
        "admin_token": SecretStr("t"),
        "torch_threads": 1,
        # NOTE: one test process starts hundreds of applications; freezing its heap would
        # cost each a full collection of it at start-up and at shutdown (0.1-0.3 s each).
        # Real servers (tests/integration) keep the default.
        "freeze_heap": False,
        **overrides,
    }
    return Settings.model_validate(values)


class FatalRecorder:
    """Stands in for the process-ending reaction to a strict start-up failure; ``called``
    is set at the first call."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.called.set()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_ready(client: TestClient, timeout_s: float = 30.0, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout_s
    while client.get(path).status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(client.get(path).json())
        time.sleep(0.02)


def post_scope(
    path: str, body: bytes, state: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    """The ASGI scope of a ``POST`` with a declared length, as a test client sends it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            *headers,
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
        "state": state.copy(),
    }


def call_app(
    client: TestClient,
    path: str,
    body: bytes,
    receive: Receive,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> list[Message]:
    """What the application sends for one POST whose body ``receive`` hands out."""
    json = [(b"content-type", b"application/json"), *headers]
    scope = post_scope(path, body, client.app_state, json)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await client.app(scope, receive, send)

    assert client.portal is not None
    client.portal.call(run)
    return sent


def status_of(sent: list[Message]) -> int:
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    return int(start["status"])
