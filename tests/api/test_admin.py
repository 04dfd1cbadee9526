from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from registry.app import create_app
from registry.repository import ModelRepository
from tests.factories import affine_model, write_manifest
from tests.support import make_settings, wait_ready

AUTH = {"Authorization": "Bearer t"}


def test_reload_needs_the_right_bearer_token(client: TestClient) -> None:
    missing = client.post("/admin/reload")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"
    for header in ("Bearer wrong", "Bearer", "Basic dDp0", "t", "Bearer t t"):
        assert client.post("/admin/reload", headers={"Authorization": header}).status_code == 401
    ok = client.post("/admin/reload", headers=AUTH)
    assert ok.status_code == 200
    assert ok.json()["applied"] is True
    assert sorted(ok.json()["unchanged"]) == ["lin:1", "lin:2"]


def test_admin_is_off_without_a_token(tmp_path: Path, weights: Path) -> None:
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",))])
    settings = make_settings(tmp_path, admin_token=None)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            response = client.post("/admin/reload", headers=headers)
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "admin_disabled"


def test_reload_applies_a_new_manifest_and_reports_it(
    client: TestClient, tmp_path: Path, weights: Path
) -> None:
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1", "2", "3"))])
    dry = client.post("/admin/reload?dry_run=true", headers=AUTH).json()
    assert (dry["dry_run"], dry["applied"], dry["added"]) == (True, False, ["lin:3"])
    assert (
        client.post("/models/lin/versions/3/predict", json={"inputs": [1, 2, 3, 4]}).status_code
        == 404
    )

    report = client.post("/admin/reload", headers=AUTH).json()
    assert report["added"] == ["lin:3"]
    assert report["alias_moves"] == [
        {"model": "lin", "alias": "(default)", "before": "2", "after": "3"},
        {"model": "lin", "alias": "stable", "before": "1", "after": None},
    ]
    assert report["loads"][0]["version"] == "lin:3"
    assert report["loads"][0]["load_ms"] > 0
    answer = client.post("/models/lin/predict", json={"inputs": [1, 2, 3, 4]})
    assert answer.headers["x-model-version"] == "3"


def test_a_failed_reload_is_an_error_envelope_and_changes_nothing(
    client: TestClient, tmp_path: Path, weights: Path
) -> None:
    entry = affine_model(weights, "lin", ("1", "2"))
    entry["versions"][1]["sha256"] = "0" * 64
    write_manifest(tmp_path, [entry])
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "reload_failed"
    assert "lin:2" in error["message"]
    assert error["report"]["failed"][0]["version"] == "lin:2"
    assert client.post("/models/lin/predict", json={"inputs": [1, 2, 3, 4]}).status_code == 200

    (tmp_path / "models.yaml").write_text("models: [", encoding="utf-8")
    invalid = client.post("/admin/reload", headers=AUTH)
    assert invalid.status_code == 422
    assert invalid.json()["error"]["code"] == "invalid_manifest"


def test_a_reload_that_removes_every_model_must_be_asked_for(
    client: TestClient, tmp_path: Path, weights: Path
) -> None:
    write_manifest(tmp_path, [affine_model(weights, "other", ("1",))])
    refused = client.post("/admin/reload", headers=AUTH)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "removes_every_model"
    assert client.post("/models/lin/predict", json={"inputs": [1, 2, 3, 4]}).status_code == 200
    applied = client.post("/admin/reload?allow_remove_all=true", headers=AUTH)
    assert applied.status_code == 200
    assert sorted(applied.json()["removed"]) == ["lin:1", "lin:2"]
    assert client.post("/models/lin/predict", json={"inputs": [1, 2, 3, 4]}).status_code == 404


def test_polling_reloads_on_change_and_survives_a_half_written_manifest(
    tmp_path: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="registry")
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",))])
    settings = make_settings(tmp_path, poll_interval_s=0.05)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        repository: ModelRepository = client.app_state["repository"]
        assert client.portal is not None
        (tmp_path / "models.yaml").write_text("models:\n  - name: lin\n    inp", encoding="utf-8")
        client.portal.call(repository.wait_reloads, 1)
        assert set(repository.reload_outcomes) == {"invalid_manifest"}
        assert "reload by poll refused" in caplog.text
        assert client.post("/models/lin/predict", json={"inputs": [1, 2, 3, 4]}).status_code == 200

        write_manifest(tmp_path, [affine_model(weights, "lin", ("1", "2"))])
        # NOTE: a refused reload is retried at each tick until the file changes again
        applied = repository.reload_outcomes.total() + 1
        while repository.reload_outcomes["applied"] == 0:
            client.portal.call(repository.wait_reloads, applied)
            applied += 1
        assert client.get("/models/lin").json()["default_version"] == "2"
        assert "reload by poll applied" in caplog.text


@pytest.mark.parametrize("ready", [None, "maybe", [1], {"a": 1}])
def test_an_index_request_whose_ready_is_no_boolean_is_a_400(
    client: TestClient, ready: object
) -> None:
    answer = client.post("/v2/repository/index", json={"ready": ready}, headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert "ready" in answer.json()["error"]  # NOTE: V2's error: one message
    assert client.post("/v2/repository/index", json={"ready": True}, headers=AUTH).json()
