"""Slow, trickling and vanishing clients against a real server process.

Each client here speaks HTTP/1.1 itself (h11 over a socket) and asks
``Expect: 100-continue``: the server sends ``100 Continue`` only when the application
first reads the body, so a client that has its 100 is, by construction, one the server
is serving and waiting on. Everything below is ordered by that, never by a sleep.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import LIN_INPUT, affine_model, affine_outputs, lin_routes, write_manifest
from tests.integration.server import Server, serving, start

pytestmark = pytest.mark.integration

ADMIN = {"REGISTRY_ADMIN_TOKEN": "secret"}
AUTH = {"Authorization": "Bearer secret"}
X = LIN_INPUT
ROUTES = lin_routes("stable")
NATIVE, V2 = ROUTES[0][1], ROUTES[2][1]


class Trickler:
    """A client that sends its headers at once, and its body only when told to."""

    def __init__(self, server: Server, path: str, body: bytes) -> None:
        address = urlsplit(server.url)
        assert address.hostname is not None
        assert address.port is not None
        self.body = body
        self.sock = socket.create_connection((address.hostname, address.port), timeout=60)
        self.http = h11.Connection(h11.CLIENT)
        self.final: h11.Response | None = None
        headers = [
            ("host", address.hostname),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("expect", "100-continue"),
            ("connection", "close"),
        ]
        self._send(h11.Request(method="POST", target=path, headers=headers))

    def _send(self, event: Any) -> None:
        data = self.http.send(event)
        if data:
            self.sock.sendall(data)

    def _next(self) -> Any:
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.http.receive_data(data)

    def started(self) -> int:
        """100 once the application reads the body; else the status it answered at once."""
        event = self._next()
        if isinstance(event, h11.Response):
            self.final = event
        status: int = event.status_code
        return status

    def send(self, part: bytes) -> None:
        self._send(h11.Data(data=part))

    def finish(self, sent: int) -> None:
        """Send the rest of the body, after the first ``sent`` bytes."""
        self._send(h11.Data(data=self.body[sent:]))
        self._send(h11.EndOfMessage())

    def hang_up(self) -> None:
        self.sock.close()

    def response(self) -> tuple[int | None, bytes]:
        """The final status and body; (None, b"") when the server closed without a word."""
        body = b""
        try:
            event = self.final or self._next()
            while isinstance(event, h11.InformationalResponse):
                event = self._next()
            if not isinstance(event, h11.Response):
                return None, b""
            status: int | None = event.status_code
            while not isinstance(event := self._next(), h11.EndOfMessage):
                if isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except h11.RemoteProtocolError:
            return None, b""
        finally:
            self.sock.close()
        return status, body


def requests_total(server: Server) -> dict[str, float]:
    """``registry_requests_total`` by status, whatever the model."""
    with server.client() as client:
        text = client.get("/metrics").text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "registry_requests_total":
                status = sample.labels["status"]
                totals[status] = totals.get(status, 0.0) + sample.value
    return totals


def outputs_of(path: str, body: bytes) -> Any:
    document = json.loads(body)
    return document["outputs"][0]["data"] if path.startswith("/v2/") else document["outputs"]


@pytest.fixture(params=["true", "false"], ids=["fast-path", "fastapi-path"])
def fast_path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_retired_version_is_released_while_a_hundred_clients_trickle(
    tmp_path: Path, fast_path: str
) -> None:
    weights = tmp_path / "weights"
    other = affine_model(weights, "other", ("1",))
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",), aliases={"stable": "1"}), other])
    args = ["--manifest", str(tmp_path / "models.yaml")]
    env = ADMIN | {"REGISTRY_FAST_PATH": fast_path}
    with serving(tmp_path, args, env) as server, server.client() as client:
        tricklers = [Trickler(server, path, body) for path, body in ROUTES * 25]
        assert [t.started() for t in tricklers] == [100] * 100
        for trickler in tricklers:
            trickler.send(trickler.body[:10])
        # every client is mid-body now; version 1 is replaced under them
        write_manifest(
            tmp_path, [affine_model(weights, "lin", ("2",), aliases={"stable": "2"}), other]
        )
        reload = client.post("/admin/reload", headers=AUTH)
        listing = client.get("/models").json()
        for trickler in tricklers:
            trickler.finish(10)
        answers = [t.response() for t in tricklers]
    assert reload.status_code == 200, reload.text
    assert reload.json()["removed"] == ["lin:1"]
    assert listing["draining"] == []  # nobody held version 1 while sending
    assert "released lin:1" in server.output()
    assert [status for status, _ in answers] == [200] * 100
    expected = affine_outputs(X, 2)
    for (path, _), (_, body) in zip(ROUTES * 25, answers, strict=True):
        np.testing.assert_allclose(outputs_of(path, body), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("env", "answers"),
    [
        ({"REGISTRY_BODY_TIMEOUT_S": "1"}, {408}),
        ({"REGISTRY_BODY_TIMEOUT_S": "60", "REGISTRY_DRAIN_TIMEOUT_S": "1"}, {503, None}),
    ],
    ids=["body-deadline-first", "drain-ends-first"],
)
def test_sigterm_with_a_hundred_clients_trickling_answers_them_and_exits_zero(
    tmp_path: Path, fast_path: str, env: dict[str, str], answers: set[int | None]
) -> None:
    """A client still sending at SIGTERM gets a 408 at its deadline, or a 503 (or a
    closed connection) when the drain runs out first: never a 500, never a traceback."""
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",))])
    args = ["--manifest", str(tmp_path / "models.yaml")]
    server = start(tmp_path, args, env | {"REGISTRY_FAST_PATH": fast_path})
    try:
        server.wait_ready()
        tricklers = [Trickler(server, path, body) for path, body in ROUTES[::2] * 50]
        assert [t.started() for t in tricklers] == [100] * 100
        for trickler in tricklers:
            trickler.send(trickler.body[:10])
        server.process.send_signal(signal.SIGTERM)
        statuses = {t.response()[0] for t in tricklers}
    finally:
        code = server.stop()
    output = server.output()
    assert statuses <= answers, output
    assert code == 0, output
    assert "Traceback" not in output
    assert "CancelledError" not in output
    assert "every model released" in output


def test_connections_past_the_limit_are_refused_with_503(tmp_path: Path) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",))])
    args = ["--manifest", str(tmp_path / "models.yaml")]
    with serving(tmp_path, args, {"REGISTRY_MAX_CONNECTIONS": "4"}) as server:
        held: list[Trickler] = []
        refused = None
        for _ in range(5):
            trickler = Trickler(server, "/models/lin/predict", NATIVE)
            if trickler.started() != 100:
                refused = trickler
                break
            held.append(trickler)
        assert refused is not None
        assert 1 <= len(held) <= 3
        assert refused.response()[0] == 503
        for trickler in held:
            trickler.finish(0)
        assert [t.response()[0] for t in held] == [200] * len(held)
        with server.client() as client:
            assert client.post("/models/lin/predict", content=NATIVE).status_code == 200


def test_a_client_that_hangs_up_mid_body_is_counted_499_not_500(
    tmp_path: Path, fast_path: str
) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",))])
    args = ["--manifest", str(tmp_path / "models.yaml")]
    with serving(tmp_path, args, {"REGISTRY_FAST_PATH": fast_path}) as server:
        for path, body in ROUTES:
            trickler = Trickler(server, path, body)
            assert trickler.started() == 100
            trickler.send(body[:10])
            trickler.hang_up()
        totals = requests_total(server)
        for _ in range(200):  # NOTE: a bound on polls, for a failure to end; not a speed
            if totals.get("499", 0) >= len(ROUTES):
                break
            time.sleep(0.05)
            totals = requests_total(server)
    assert totals == {"499": len(ROUTES)}, server.output()
    assert "Traceback" not in server.output()


def _closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Whether the server closes ``sock``: read until it does, sending a byte of
    ``trickle`` at each tenth of a second that passes without an answer."""
    sock.settimeout(0.1)
    for index in range(600):
        if trickle:
            try:
                sock.sendall(trickle[index % len(trickle) : index % len(trickle) + 1])
            except OSError:
                return True
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_connections_whose_headers_never_arrive_are_closed(tmp_path: Path) -> None:
    """Silent sockets, and headers sent a byte at a time, would otherwise hold the
    connection limit for good, and every other client would be answered 503."""
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",))])
    args = ["--manifest", str(tmp_path / "models.yaml")]
    env = {"REGISTRY_MAX_CONNECTIONS": "3", "REGISTRY_HEADER_TIMEOUT_S": "0.5"}
    with serving(tmp_path, args, env) as server:
        address = urlsplit(server.url)
        where = (address.hostname or "", address.port or 0)
        silent = [socket.create_connection(where, timeout=30) for _ in range(2)]
        trickling = socket.create_connection(where, timeout=30)
        trickling.sendall(b"POST /models/lin/predict HTTP/1.1\r\n")
        try:
            assert _closed_by_server(trickling, trickle=b"x-header-name-without-end")
            assert all(_closed_by_server(sock) for sock in silent)
        finally:
            for sock in [*silent, trickling]:
                sock.close()
        with server.client() as client:
            assert client.post("/models/lin/predict", content=NATIVE).status_code == 200


def test_the_wait_between_kept_alive_requests_is_the_keep_alives(tmp_path: Path) -> None:
    """The header timeout counts from a later request's first byte: a connection idle
    between requests for longer than it, but within the keep-alive, is kept."""
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",))])
    args = ["--manifest", str(tmp_path / "models.yaml")]
    env = {"REGISTRY_HEADER_TIMEOUT_S": "0.5", "REGISTRY_KEEP_ALIVE_TIMEOUT_S": "30"}
    with serving(tmp_path, args, env) as server:
        address = urlsplit(server.url)
        host = address.hostname or ""
        headers = [("host", host), ("content-length", str(len(NATIVE)))]
        http = h11.Connection(h11.CLIENT)
        statuses = []
        with socket.create_connection((host, address.port or 0), timeout=30) as sock:
            for turn in range(2):
                if turn:
                    time.sleep(1.5)  # NOTE: three header timeouts, well within the keep-alive
                request = h11.Request(method="POST", target="/models/lin/predict", headers=headers)
                sock.sendall(http.send(request) + http.send(h11.Data(data=NATIVE)))
                sock.sendall(http.send(h11.EndOfMessage()))
                while not isinstance(event := http.next_event(), h11.EndOfMessage):
                    if event is h11.NEED_DATA:
                        http.receive_data(sock.recv(65536))
                    elif isinstance(event, h11.Response):
                        statuses.append(event.status_code)
                    elif isinstance(event, h11.ConnectionClosed):
                        break
                http.start_next_cycle()
        assert statuses == [200, 200]
