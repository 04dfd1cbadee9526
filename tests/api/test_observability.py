from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from registry.app import create_app
from registry.settings import Settings
from tests.support import call_app, status_of, wait_ready

X = [1.0, 2.0, 3.0, 4.0]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests_total(samples: Samples, model: str, version: str, status: int) -> float:
    key = (
        "registry_requests_total",
        (("model", model), ("status", str(status)), ("version", version)),
    )
    return float(samples.get(key, 0.0))


def test_counters_move_by_exactly_the_requests_sent(client: TestClient) -> None:
    before = scrape(client)
    for _ in range(5):
        assert client.post("/models/lin/predict", json={"inputs": X}).status_code == 200
    for _ in range(3):
        assert (
            client.post("/models/lin/versions/stable/predict", json={"inputs": X}).status_code
            == 200
        )
    for _ in range(2):
        assert client.post("/models/lin/predict", json={"inputs": [1]}).status_code == 422
    assert client.post("/models/ghost/predict", json={"inputs": X}).status_code == 404
    client.get("/models")  # not a prediction: not counted
    after = scrape(client)

    def moved(model: str, version: str, status: int) -> float:
        return requests_total(after, model, version, status) - requests_total(
            before, model, version, status
        )

    assert moved("lin", "2", 200) == 5
    assert moved("lin", "1", 200) == 3
    assert moved("lin", "2", 422) == 2
    assert moved("(unknown)", "(unknown)", 404) == 1
    total = sum(v for (name, _), v in after.items() if name == "registry_requests_total")
    assert total == 11
    count = after[("registry_request_duration_seconds_count", (("model", "lin"), ("version", "2")))]
    assert count == 7


def test_live_state_gauges_and_info(client: TestClient) -> None:
    samples = scrape(client)
    lin2 = (("model", "lin"), ("version", "2"))
    assert samples[("registry_model_memory_bytes", lin2)] == 60
    assert samples[("registry_model_load_seconds", lin2)] > 0
    assert samples[("registry_in_flight_requests", lin2)] == 0
    assert samples[("registry_queue_depth", lin2)] == 0
    infos = {labels: v for (name, labels), v in samples.items() if name == "registry_model_info"}
    aliases = {dict(labels)["version"]: dict(labels)["alias"] for labels in infos}
    assert aliases == {"1": "stable", "2": "default"}
    assert all(len(dict(labels)["sha256"]) == 64 for labels in infos)


def test_loads_are_counted_and_timed_by_model(client: TestClient) -> None:
    samples = scrape(client)
    assert samples[("registry_loads_total", (("model", "lin"), ("outcome", "loaded")))] == 2
    lin = (("model", "lin"),)
    assert samples[("registry_load_duration_seconds_count", lin)] == 2
    assert samples[("registry_load_duration_seconds_sum", lin)] > 0
    every = (("le", "+Inf"), ("model", "lin"))
    assert samples[("registry_load_duration_seconds_bucket", every)] == 2


def test_reloads_are_counted_by_outcome(client: TestClient) -> None:
    auth = {"Authorization": "Bearer t"}
    client.post("/admin/reload", headers=auth)
    client.post("/admin/reload?dry_run=true", headers=auth)
    samples = scrape(client)
    assert samples[("registry_reloads_total", (("outcome", "applied"),))] == 1
    assert samples[("registry_reloads_total", (("outcome", "dry_run"),))] == 1


def test_request_id_is_kept_or_made_and_echoed(client: TestClient) -> None:
    kept = client.post(
        "/models/lin/predict", json={"inputs": X}, headers={"X-Request-ID": "abc-123"}
    )
    assert kept.headers["x-request-id"] == "abc-123"
    made = client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    hostile = client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert hostile.headers["x-request-id"] != "a b\tc" + "x" * 200
    error = client.post(
        "/models/ghost/predict", json={"inputs": X}, headers={"X-Request-ID": "e-1"}
    )
    assert error.headers["x-request-id"] == "e-1"


@pytest.mark.parametrize("path", ["/models/lin/predict", "/v2/models/lin/infer"])
def test_a_client_that_hangs_up_mid_body_is_499_never_a_server_error(
    client: TestClient, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nginx's 499 (client closed request), counted before any version was chosen."""
    before = scrape(client)
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"inputs": [1.0,', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    sent = call_app(client, path, b"x" * 100, receive)
    after = scrape(client)
    assert status_of(sent) == 499  # the server drops it: nobody is left to read it
    assert requests_total(after, "(unknown)", "(unknown)", 499) == 1 + requests_total(
        before, "(unknown)", "(unknown)", 499
    )
    server_errors = [
        labels
        for (name, labels), value in after.items()
        if name == "registry_requests_total" and dict(labels)["status"].startswith("5")
    ]
    assert server_errors == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_path_cannot_write_an_access_log_line_of_its_own(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``%0A`` in the URL is decoded into the path: logged as it is, it would end the
    line and start one the client wrote (uvicorn's CVE-2020-7694)."""
    forged = "\n2026-01-01 00:00:00,000 INFO registry.access: POST /admin/reload 200 1.0 ms"
    with TestClient(create_app(settings.model_copy(update={"access_log": True}))) as client:
        wait_ready(client)
        caplog.set_level(logging.INFO, logger="registry.access")
        assert client.post("/nothing" + quote(forged), content=b"{}").status_code == 404
    (record,) = [
        r
        for r in caplog.records
        if r.name == "registry.access" and getattr(r, "path", "").startswith("/nothing")
    ]
    line = record.getMessage()
    assert "\n" not in line
    assert line.startswith("POST /nothing\\x0a2026-01-01 00:00:00,000 INFO registry.access")
    assert record.path == "/nothing" + forged  # type: ignore[attr-defined]


@pytest.mark.parametrize("incoming", [b"abc\n", b"abc\xe9", b"x" * 129, b""])
def test_a_request_id_that_is_not_plain_ascii_whole_is_replaced(
    client: TestClient, incoming: bytes
) -> None:
    """Echoed and logged as it came, an id must be letters, digits and a few marks, all of
    it: a final newline, or a byte the client's encoding and ours read differently, is not."""
    body = b'{"inputs": [1, 2, 3, 4]}'
    messages: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0)

    sent = call_app(client, "/models/lin/predict", body, receive, [(b"x-request-id", incoming)])
    assert status_of(sent) == 200
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    echoed = dict(start["headers"])[b"x-request-id"]
    assert echoed != incoming
    assert len(echoed) == 32
