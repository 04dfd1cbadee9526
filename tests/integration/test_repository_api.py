"""The management API (V2 model repository and ``/admin/models``) against a real server.

NVIDIA's own ``tritonclient`` drives the V2 routes; plain HTTP checks what no client
library would send (no token, a model configuration, a model the manifest lacks).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.factories import model_entry, write_manifest
from tests.integration.server import Server, start
from tests.integration.test_memory_budget import (
    FEATURES,
    SENTINEL,
    Ridge,
    digits,
    ridge_versions,
    versions_of,
)

pytestmark = pytest.mark.integration

TOKEN = "repository-secret"  # noqa: S105 (this module's own servers' token)


def auth() -> dict[str, str]:
    """The admin token's header, a fresh dict each call: ``tritonclient`` writes its own
    headers (``Content-Length``) into the dict it is given."""
    return {"Authorization": f"Bearer {TOKEN}"}


ROUTES = (
    "/v2/repository/index",
    "/v2/repository/models/{name}/load",
    "/v2/repository/models/{name}/unload",
    "/admin/models/{name}/load",
    "/admin/models/{name}/unload",
    "/admin/models/{name}/versions/{version}/load",
    "/admin/models/{name}/versions/{version}/unload",
)
"""The seven management routes (all POST)."""
MODEL_ROUTES = ROUTES[1:]
VERSION_ROUTES = ROUTES[-2:]


@dataclass(frozen=True)
class Repository:
    server: Server
    root: Path
    models: list[dict[str, Any]]
    """The manifest's models, as written."""
    ridges: dict[str, dict[str, Ridge]]
    """model -> version -> the classifier it serves."""
    gate: Path

    def triton(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.server.url.removeprefix("http://"))


def ridge_model(
    weights: Path, name: str, count: int, seed: int, **extra: Any
) -> tuple[dict[str, Any], dict[str, Ridge]]:
    architecture = extra.pop("architecture", "tests.factories:Affine")
    args = extra.pop("args", {})
    entries, ridges = ridge_versions(
        weights, name, count, first_seed=seed, architecture=architecture, **args
    )
    return model_entry(name, entries, shape=(FEATURES,), **extra), ridges


@dataclass(frozen=True)
class Servers:
    repository: Repository
    admin_off: Server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Both servers of this module, started side by side: one with an admin token, one
    without (its management API is off)."""
    root = tmp_path_factory.mktemp("repository")
    weights = root / "weights"
    gate = root / "gate"
    specs = {
        "eager": ridge_model(weights, "eager", 2, seed=10),
        "lazy": ridge_model(weights, "lazy", 2, seed=20, load="lazy"),
        "gated": ridge_model(
            weights,
            "gated",
            1,
            seed=30,
            architecture="tests.integration.test_memory_budget:Gated",
            args={"gate": str(gate)},
        ),
        "untouched": ridge_model(weights, "untouched", 1, seed=40, load="lazy"),
        "guarded": ridge_model(weights, "guarded", 1, seed=50),
        "kept-eager": ridge_model(weights, "kept-eager", 1, seed=60),
        "kept-lazy": ridge_model(weights, "kept-lazy", 1, seed=70, load="lazy"),
    }
    models = [entry for entry, _ in specs.values()]
    write_manifest(root, models)
    off_root = tmp_path_factory.mktemp("admin-off")
    write_manifest(off_root, [ridge_model(off_root / "weights", "plain", 1, seed=80)[0]])

    env = {"REGISTRY_ADMIN_TOKEN": TOKEN}
    started = [
        start(root, ["--manifest", str(root / "models.yaml")], env),
        start(off_root, ["--manifest", str(off_root / "models.yaml")]),
    ]
    try:
        for server in started:
            server.wait_ready()
        ridges = {name: ridges for name, (_, ridges) in specs.items()}
        yield Servers(Repository(started[0], root, models, ridges, gate), started[1])
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def repository(servers: Servers) -> Repository:
    return servers.repository


@pytest.fixture
def admin_off(servers: Servers) -> Server:
    return servers.admin_off


def predict(
    client: httpx.Client, name: str, version: str, rows: npt.NDArray[np.float32]
) -> httpx.Response:
    return client.post(f"/models/{name}/versions/{version}/predict", json={"inputs": rows.tolist()})


def assert_answers(
    response: httpx.Response, ridge: Ridge, version: str, rows: npt.NDArray[np.float32]
) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == version
    np.testing.assert_allclose(
        response.json()["outputs"], ridge.outputs(rows), rtol=1e-4, atol=1e-4
    )


def index_of(client: triton.InferenceServerClient) -> dict[tuple[str, str], dict[str, str]]:
    """The V2 repository index by (model, version)."""
    entries = client.get_model_repository_index(headers=auth())
    return {(e["name"], e["version"]): e for e in entries}


def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def ready(client: triton.InferenceServerClient, name: str, *versions: str) -> list[bool]:
    """``is_model_ready`` for the model (its default version) and then each version."""
    return [client.is_model_ready(name, headers=auth())] + [
        client.is_model_ready(name, version, headers=auth()) for version in versions
    ]


def error_of(response: httpx.Response) -> str:
    """The error's code (``/admin``), or its message (``/v2``, whose body is
    ``{"error": "<message>"}``)."""
    error = response.json()["error"]
    if response.url.path.startswith("/v2/"):
        assert isinstance(error, str), error
        return error
    assert isinstance(error, dict), error
    assert isinstance(error["message"], str)
    code: str = error["code"]
    return code


# --- tritonclient: index, load, unload, readiness ----------------------------------------


def test_tritonclient_loads_and_unloads_a_lazy_model(repository: Repository) -> None:
    rows = digits().x_test[:3]
    client = repository.triton()
    try:
        index = index_of(client)
        readiness_before = ready(client, "lazy", "1", "2")
        client.load_model("lazy", headers=auth())
        readiness_loaded = ready(client, "lazy", "1", "2")
        index_loaded = index_of(client)
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        inferred = client.infer("lazy", [tensor], model_version="1", headers=auth())
        client.unload_model("lazy", headers=auth())
        readiness_unloaded = ready(client, "lazy", "1", "2")
        eventually(
            lambda: all(
                index_of(client)[("lazy", v)]["state"] == "UNAVAILABLE" for v in ("1", "2")
            ),
            "lazy's versions never gave their memory back",
        )
        index_unloaded = index_of(client)
    finally:
        client.close()
    with repository.server.client() as http:
        again = predict(http, "lazy", "2", rows)  # a lazy version loads on its next request

    for version in ("1", "2"):
        assert index[("lazy", version)] == {
            "name": "lazy",
            "version": version,
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        }
        assert index_loaded[("lazy", version)]["state"] == "READY"
        assert index_unloaded[("lazy", version)]["state"] == "UNAVAILABLE"
        assert index_unloaded[("lazy", version)]["reason"] == "unloaded"
    assert index[("eager", "1")]["state"] == "READY"
    assert readiness_before == [False, False, False]
    assert readiness_loaded == [True, True, True]
    assert readiness_unloaded == [False, False, False]
    np.testing.assert_allclose(
        inferred.as_numpy("output"),
        repository.ridges["lazy"]["1"].outputs(rows),
        rtol=1e-4,
        atol=1e-4,
    )
    assert_answers(again, repository.ridges["lazy"]["2"], "2", rows)


def test_tritonclient_unloads_and_loads_an_eager_model(repository: Repository) -> None:
    rows = digits().x_test[3:5]
    client = repository.triton()
    try:
        readiness_start = ready(client, "eager", "1", "2")
        client.unload_model("eager", headers=auth())
        readiness_unloaded = ready(client, "eager", "1", "2")
        with repository.server.client() as http:
            refused = predict(http, "eager", "1", rows)
            listing_unloaded = versions_of(http, "eager")
        client.load_model("eager", headers=auth())
        readiness_loaded = ready(client, "eager", "1", "2")
        index = index_of(client)
    finally:
        client.close()
    with repository.server.client() as http:
        answers = {v: predict(http, "eager", v, rows) for v in ("1", "2")}
        listing = versions_of(http, "eager")

    assert readiness_start == [True, True, True]
    assert readiness_unloaded == [False, False, False]
    # an operator's unload of an eager version holds until an operator loads it again
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_unloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert {v["state"] for v in listing_unloaded.values()} <= {"unloaded", "evicting"}
    assert {v["last_eviction"] for v in listing_unloaded.values()} == {"unload"}
    assert readiness_loaded == [True, True, True]
    assert index[("eager", "1")]["state"] == index[("eager", "2")]["state"] == "READY"
    for version, answer in answers.items():
        assert_answers(answer, repository.ridges["eager"][version], version, rows)
    assert {v["state"] for v in listing.values()} == {"ready"}
    assert {v["load"] for v in listing.values()} == {"eager"}


def test_an_unload_lets_the_request_in_flight_finish(repository: Repository) -> None:
    plain = digits().x_test[5:7]
    slow = plain.copy()
    slow[:, 0] = SENTINEL
    ridge = repository.ridges["gated"]["1"]
    server = repository.server

    def predict_alone() -> httpx.Response:
        with server.client() as own:
            return predict(own, "gated", "1", slow)

    client = repository.triton()
    try:
        assert ready(client, "gated", "1") == [True, True]
        with server.client() as http, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(predict_alone)
            try:
                eventually(
                    lambda: versions_of(http, "gated")["1"]["in_flight"] == 1,
                    "the slow request never leased gated:1",
                )
                client.unload_model("gated", headers=auth())
                still_running = not in_flight.done()
                readiness_unloading = ready(client, "gated", "1")
                index_unloading = index_of(client)[("gated", "1")]
                listing_unloading = versions_of(http, "gated")["1"]
            finally:
                repository.gate.touch()  # NOTE: also when something above failed
            answer = in_flight.result(timeout=30)
            eventually(
                lambda: versions_of(http, "gated")["1"]["state"] == "unloaded",
                "gated:1 never gave its memory back",
            )
        client.load_model("gated", headers=auth())
        readiness_loaded = ready(client, "gated", "1")
    finally:
        repository.gate.unlink(missing_ok=True)
        client.close()

    assert still_running
    assert readiness_unloading == [False, False]
    assert index_unloading == {
        "name": "gated",
        "version": "1",
        "state": "UNLOADING",
        "reason": "evicting",
    }
    assert listing_unloading["state"] == "evicting"
    assert_answers(answer, ridge, "1", slow)
    assert "released gated:1" in server.output()
    assert readiness_loaded == [True, True]


# --- the admin token, and what the manifest lacks ----------------------------------------


def route(template: str, name: str = "guarded", version: str = "1") -> str:
    return template.format(name=name, version=version)


@pytest.mark.parametrize("template", ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}],
    ids=["no-token", "wrong-token", "not-bearer"],
)
def test_management_needs_the_admin_token(
    repository: Repository, template: str, headers: dict[str, str]
) -> None:
    with repository.server.client() as client:
        answer = client.post(route(template), headers=headers)
        state = versions_of(client, "guarded")["1"]["state"]
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    error = error_of(answer)
    if not template.startswith("/v2/"):
        assert error == "unauthorized"
    assert state == "ready"  # an unload without the token did nothing


@pytest.mark.parametrize("template", ROUTES)
def test_management_is_off_without_a_configured_token(admin_off: Server, template: str) -> None:
    with admin_off.client() as client:
        answers = [
            client.post(route(template, name="plain"), headers=headers)
            for headers in ({}, auth(), {"Authorization": "Bearer wrong"})
        ]
        state = versions_of(client, "plain")["1"]["state"]
    for answer in answers:
        assert answer.status_code == 403, answer.text
        error = error_of(answer)
        if not template.startswith("/v2/"):
            assert error == "admin_disabled"
    assert state == "ready"


@pytest.mark.parametrize("template", MODEL_ROUTES)
def test_management_of_a_model_the_manifest_lacks_is_404(
    repository: Repository, template: str
) -> None:
    with repository.server.client() as client:
        answer = client.post(route(template, name="absent"), headers=auth())
    assert answer.status_code == 404, answer.text
    error = error_of(answer)
    if template.startswith("/v2/"):
        assert "absent" in error
    else:
        assert error == "model_not_found"


@pytest.mark.parametrize("template", VERSION_ROUTES)
def test_management_of_a_version_the_manifest_lacks_is_404(
    repository: Repository, template: str
) -> None:
    with repository.server.client() as client:
        answer = client.post(route(template, version="9"), headers=auth())
        state = versions_of(client, "guarded")["1"]["state"]
    assert answer.status_code == 404, answer.text
    assert error_of(answer) == "version_not_found"
    assert state == "ready"


def test_a_load_that_brings_its_own_configuration_is_refused(repository: Repository) -> None:
    url = "/v2/repository/models/untouched/load"
    bodies = [
        {"parameters": {"config": '{"backend": "python"}'}},
        {"parameters": {"file:1/model.py": "aW1wb3J0IG9z", "config": "{}"}},
        {"parameters": {"file:1/model.pt": "AAAA"}},
    ]
    with repository.server.client() as http:
        refused = [http.post(url, json=body, headers=auth()) for body in bodies]
        not_an_object = http.post(url, json={"parameters": ["config"]}, headers=auth())
        state_after = versions_of(http, "untouched")["1"]["state"]
    client = repository.triton()
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("untouched", config='{"backend": "python"}', headers=auth())
        ready_after = client.is_model_ready("untouched", headers=auth())
        client.load_model("untouched", headers=auth())  # without one, the same load is fine
        ready_loaded = client.is_model_ready("untouched", headers=auth())
    finally:
        client.close()

    for answer in refused:
        assert answer.status_code == 400, answer.text
        assert "manifest" in error_of(answer)
    assert "'config'" in error_of(refused[0])
    assert "'file:1/model.pt'" in error_of(refused[2])
    assert not_an_object.status_code == 400
    assert raised.value.status() == "400"
    assert state_after == "unloaded"
    assert not ready_after
    assert ready_loaded


# --- a reload leaves what it does not change unloaded -------------------------------------


def test_a_reload_keeps_unloaded_versions_unloaded(repository: Repository) -> None:
    server, root = repository.server, repository.root
    rows = digits().x_test[7:9]
    added, added_ridges = ridge_model(root / "weights", "added", 1, seed=90)
    with server.client() as client:
        unload = client.post("/admin/models/kept-eager/versions/1/unload", headers=auth())
        eventually(
            lambda: versions_of(client, "kept-eager")["1"]["state"] == "unloaded",
            "kept-eager:1 never gave its memory back",
        )
        same = client.post("/admin/reload", headers=auth())
        after_same = {n: versions_of(client, n)["1"] for n in ("kept-eager", "kept-lazy")}
        staging = root / "staging"
        staging.mkdir()
        write_manifest(staging, [*repository.models, added])
        os.replace(staging / "models.yaml", root / "models.yaml")
        grown = client.post("/admin/reload", headers=auth())
        after_grown = {n: versions_of(client, n)["1"] for n in ("kept-eager", "kept-lazy", "added")}
        eager_answer = predict(client, "kept-eager", "1", rows)
        lazy_answer = predict(client, "kept-lazy", "1", rows)
        added_answer = predict(client, "added", "1", rows)

    assert unload.status_code == 200, unload.text
    assert {v["version"]: v["state"] for v in unload.json()["versions"]}["1"] in (
        "unloaded",
        "evicting",
    )
    for report in (same, grown):
        assert report.status_code == 200, report.text
        assert {"kept-eager:1", "kept-lazy:1"} <= set(report.json()["unchanged"])
        assert report.json()["reloaded"] == []
    assert same.json()["added"] == []
    assert grown.json()["added"] == ["added:1"]
    for after in (after_same, after_grown):
        assert after["kept-eager"]["state"] == "unloaded"
        assert after["kept-eager"]["last_eviction"] == "unload"
        assert after["kept-lazy"]["state"] == "unloaded"
    assert after_grown["added"]["state"] == "ready"
    # the operator's unload still holds; the lazy version loads when asked, as before
    assert eager_answer.status_code == 503
    assert eager_answer.json()["error"]["code"] == "model_unloaded"
    assert_answers(lazy_answer, repository.ridges["kept-lazy"]["1"], "1", rows)
    assert_answers(added_answer, added_ridges["1"], "1", rows)
