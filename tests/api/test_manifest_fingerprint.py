"""Replicas converge: each tells the fingerprint of the manifest it serves, in ``/models``
and ``/metrics``, and it follows what the manifest says, not how the file is written."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from registry.app import create_app
from tests.factories import affine_model, write_manifest
from tests.support import make_settings, wait_ready

AUTH = {"Authorization": "Bearer t"}


@contextmanager
def replica(directory: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(directory))) as client:
        wait_ready(client)
        yield client


def fingerprint(client: TestClient) -> str:
    listed = client.get("/models").json()["manifest_sha256"]
    metric = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("registry_manifest_info{")
    ]
    assert metric == [f'registry_manifest_info{{sha256="{listed}"}} 1.0']
    return str(listed)


def test_replicas_of_one_manifest_agree_and_a_change_shows_until_it_is_applied(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        (directory / "weights").mkdir(parents=True)
    models = [affine_model(first / "weights", "lin", ("1",))]
    affine_model(second / "weights", "lin", ("1",))
    write_manifest(first, models)
    # NOTE: the same models, written another way: a comment, flow style, other key order
    text = "# the second replica's copy\n" + yaml.safe_dump(
        {"models": models}, default_flow_style=True, sort_keys=True
    )
    (second / "models.yaml").write_text(text)

    with replica(first) as one, replica(second) as two:
        before = fingerprint(one)
        assert fingerprint(two) == before
        write_manifest(first, [models[0] | {"description": "a change"}])
        assert fingerprint(one) == before  # NOTE: not applied yet
        assert one.post("/admin/reload", headers=AUTH).status_code == 200
        after = fingerprint(one)

    assert after != before
