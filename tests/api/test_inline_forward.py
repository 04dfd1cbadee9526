"""A slow model never runs on the event loop: the server answers while it computes.

A tiny model's lone request may run its forward pass inline on the event loop
(``registry.batching``). This checks the other side of that rule with a real server
process (an in-process client would share the loop with the test): while a slow model's
pass cannot finish, ``/healthz`` is answered. By ordering, not by a clock: the pass has
signalled that it started, and it finishes only when the test opens its gate, which the
test does only after ``/healthz`` has answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from registry.app import create_app
from registry.inline import INLINE_EVIDENCE, InlineGate
from tests.factories import LIN_INPUT, model_entry, parameterless_version, write_manifest
from tests.integration.server import serving
from tests.slow_model import passes
from tests.support import make_settings, wait_ready

pytestmark = pytest.mark.integration

INFERENCE_THREAD = "infer-gated:1"  # the Batcher's thread for gated:1


def gated_model(weights: Path, gate: Path) -> dict[str, object]:
    version = parameterless_version(
        weights, "gated", "tests.slow_model:Gated", architecture_args={"directory": str(gate)}
    )
    return model_entry("gated", [version], warmup=False)  # NOTE: warm-up would pass the gate


def predict(client: httpx.Client) -> httpx.Response:
    return client.post("/models/gated/predict", json={"inputs": LIN_INPUT})


def queue_depth(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    (family,) = (
        f for f in text_string_to_metric_families(text) if f.name == "registry_queue_depth"
    )
    return sum(s.value for s in family.samples if s.labels == {"model": "gated", "version": "1"})


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition`` holds (the deadline only stops a hung test)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def test_healthz_is_answered_while_a_slow_model_computes(tmp_path: Path) -> None:
    weights, gate = tmp_path / "weights", tmp_path / "gate"
    gate.mkdir()
    write_manifest(tmp_path, [gated_model(weights, gate)])
    (gate / "open").touch()
    with (
        serving(tmp_path, ["--manifest", str(tmp_path / "models.yaml")]) as server,
        server.client() as client,
        ThreadPoolExecutor(max_workers=3) as pool,
    ):
        senders = [server.client() for _ in range(3)]
        # NOTE: more lone one-row passes than inline needs as evidence, each one slow
        for _ in range(INLINE_EVIDENCE + 2):
            assert predict(client).status_code == 200
        history = len(passes(gate))
        (gate / "open").unlink()
        try:
            predicts: list[Future[httpx.Response]] = [pool.submit(predict, senders[0])]
            until(lambda: len(passes(gate)) > history, "the first held pass started")
            predicts += [pool.submit(predict, sender) for sender in senders[1:]]
            until(lambda: queue_depth(client) == 2, "two requests queued behind it")
            assert client.get("/healthz").status_code == 200
            assert not any(p.done() for p in predicts)  # held at the gate: still computing
        finally:
            (gate / "open").touch()
        answers = [p.result() for p in predicts]
        for sender in senders:
            sender.close()
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["outputs"] == LIN_INPUT for a in answers)
    started = passes(gate)
    assert {thread for thread, _ in started} == {INFERENCE_THREAD}  # never the event loop
    assert [rows for _, rows in started[history:]] == [1, 2]  # the queued two share a pass


def test_healthz_is_answered_while_a_handler_decodes_slowly(tmp_path: Path) -> None:
    """Handler code runs on the inference thread too: a decode that sleeps 50 ms at a time
    until the test lets it go never holds the event loop."""
    weights, gate = tmp_path / "weights", tmp_path / "gate"
    gate.mkdir()
    version = parameterless_version(weights, "slow-decode", "tests.handlers:Identity")
    entry = model_entry(
        "slow-decode",
        [version],
        warmup=False,
        handler="tests.handlers:Gated",
        handler_args={"directory": str(gate)},
    )
    write_manifest(tmp_path, [entry])
    with (
        serving(tmp_path, ["--manifest", str(tmp_path / "models.yaml")]) as server,
        server.client() as client,
        server.client() as sender,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        held = pool.submit(sender.post, "/models/slow-decode/predict", json={"inputs": LIN_INPUT})
        try:
            until(lambda: (gate / "entered").exists(), "the decode started")
            assert client.get("/healthz").status_code == 200
            assert not held.done()  # NOTE: still decoding, behind the gate
        finally:
            (gate / "open").touch()
        answer = held.result()
    assert answer.status_code == 200
    assert answer.json()["outputs"] == LIN_INPUT
    threads = (gate / "entered").read_text(encoding="utf-8").split()
    assert threads == ["infer-slow-decode:1"]


@pytest.mark.parametrize(("shape", "inline"), [([4], True), ([-1], False)])
def test_a_variable_axis_never_runs_inline_however_fast_its_rows(
    tmp_path: Path, shape: list[int], inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row of a ``-1`` axis may be as long as the body limit allows: the fast short
    rows before it prove nothing. A fixed shape is the control: the same fast passes
    send it inline, so the test can tell. A measured limit is raised to a second, so
    that the shape decides, not how busy the machine is; a fixed limit of 0 stays 0."""
    measured = InlineGate.limit_s
    monkeypatch.setattr(InlineGate, "limit_s", lambda gate: 1.0 if measured(gate) else 0.0)
    weights = tmp_path / "weights"
    version = parameterless_version(weights, "where", "tests.handlers:OnWhichThread")
    write_manifest(tmp_path, [model_entry("where", [version], shape)])
    with TestClient(create_app(make_settings(tmp_path, weights_dir=weights))) as client:
        wait_ready(client)
        threads = {
            client.post("/models/where/predict", json={"inputs": LIN_INPUT}).json()["outputs"][0]
            for _ in range(4 * INLINE_EVIDENCE)
        }
    assert (0.0 in threads) is inline, threads
    assert 1.0 in threads  # NOTE: the first passes, before the evidence, ran on the thread
