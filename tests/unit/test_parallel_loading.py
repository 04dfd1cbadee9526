"""Versions load ``REGISTRY_LOAD_WORKERS`` at a time, at start-up and on reload.

By construction, not by the clock: ``Rendezvous`` versions build only while the other
versions of their group are building too, so serial loading fails them; ``CountsBuilds``
records how many of its versions were ever being built at once.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from registry.errors import ReloadFailed, ShuttingDown
from registry.model import LoadedModel
from registry.table import VersionState
from tests.factories import (
    BuildsWhenReleased,
    CountsBuilds,
    FailsToBuild,
    model_entry,
    parameterless_version,
    write_manifest,
)
from tests.support import Running, Start, make_settings, running

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def models(weights: Path, architecture: str, count: int, **args: Any) -> list[dict[str, Any]]:
    return [
        model_entry(
            f"m{i}",
            [
                parameterless_version(
                    weights, f"m{i}", f"tests.factories:{architecture}", architecture_args=args
                )
            ],
            warmup=False,
        )
        for i in range(count)
    ]


def states(serving: Running) -> dict[str, VersionState]:
    return {str(v.key): v.state for v in serving.registry.status().versions()}


async def test_start_up_loads_versions_side_by_side(tmp_path: Path, start: Start) -> None:
    group = uuid.uuid4().hex
    write_manifest(tmp_path, models(tmp_path / "weights", "Rendezvous", 2, group=group))
    serving = await start(make_settings(tmp_path, load_workers=2))
    assert await serving.repository.wait_loaded() == []
    assert set(states(serving).values()) == {VersionState.READY}


async def test_one_worker_loads_one_version_at_a_time(tmp_path: Path, start: Start) -> None:
    group = uuid.uuid4().hex
    write_manifest(tmp_path, models(tmp_path / "weights", "CountsBuilds", 3, group=group))
    serving = await start(make_settings(tmp_path, load_workers=1))
    assert await serving.repository.wait_loaded() == []
    assert CountsBuilds.building[group][1] == 1


async def test_a_reload_loads_its_new_versions_side_by_side(tmp_path: Path, start: Start) -> None:
    weights = tmp_path / "weights"
    kept = models(weights, "CountsBuilds", 1, group=uuid.uuid4().hex)
    write_manifest(tmp_path, kept)
    serving = await start(make_settings(tmp_path, load_workers=2))
    await serving.repository.wait_loaded()
    added = models(weights, "Rendezvous", 3, group=uuid.uuid4().hex)[1:]  # m1 and m2
    write_manifest(tmp_path, kept + added)
    report = await serving.repository.reload(actor="test")
    assert sorted(report.added) == ["m1:1", "m2:1"]
    assert report.unchanged == ["m0:1"]
    assert set(states(serving).values()) == {VersionState.READY}


def test_the_default_is_the_cores_at_most_four(tmp_path: Path) -> None:
    assert 1 <= make_settings(tmp_path).loaders <= 4
    assert make_settings(tmp_path, load_workers=7).loaders == 7


async def test_a_reload_starts_no_load_after_the_first_failure(
    tmp_path: Path, start: Start
) -> None:
    weights = tmp_path / "weights"
    kept = models(weights, "CountsBuilds", 1, group=uuid.uuid4().hex)
    write_manifest(tmp_path, kept)
    serving = await start(make_settings(tmp_path, load_workers=1))
    await serving.repository.wait_loaded()
    group = uuid.uuid4().hex
    write_manifest(tmp_path, kept + models(weights, "FailsToBuild", 4, group=group)[1:])
    with pytest.raises(ReloadFailed):
        await serving.repository.reload(actor="test")
    assert FailsToBuild.attempts[group] == 1


async def test_shutdown_during_start_up_begins_no_more_loads(tmp_path: Path) -> None:
    """Shutdown waits for the load under way (it cannot be interrupted), and none of those
    still waiting for a loader thread begins."""
    group = uuid.uuid4().hex
    write_manifest(tmp_path, models(tmp_path / "weights", "BuildsWhenReleased", 3, group=group))
    async with running(make_settings(tmp_path, load_workers=1)) as serving:
        assert await asyncio.to_thread(BuildsWhenReleased.began(group).wait, 30)
        closing = asyncio.ensure_future(serving.repository.close())
        await asyncio.sleep(0)  # NOTE: close has begun, and waits for start-up loading
        BuildsWhenReleased.released(group).set()
        await closing
    assert BuildsWhenReleased.started[group] == 1


async def test_a_reload_that_shutdown_overtakes_keeps_nothing_it_loaded(
    tmp_path: Path, start: Start
) -> None:
    group = uuid.uuid4().hex
    weights = tmp_path / "weights"
    kept = models(weights, "CountsBuilds", 1, group=uuid.uuid4().hex)
    write_manifest(tmp_path, kept)
    serving = await start(make_settings(tmp_path, load_workers=1))
    await serving.repository.wait_loaded()
    discarded: list[str] = []
    discard = serving.registry.discard

    def recorded(model: LoadedModel) -> None:
        discarded.append(str(model.key))
        discard(model)

    serving.registry.discard = recorded  # type: ignore[method-assign]
    added = models(weights, "BuildsWhenReleased", 2, group=group)[1:]  # NOTE: m1
    write_manifest(tmp_path, kept + added)
    reload = asyncio.ensure_future(serving.repository.reload(actor="test"))
    assert await asyncio.to_thread(BuildsWhenReleased.began(group).wait, 30)
    closing = asyncio.ensure_future(serving.repository.close())
    await asyncio.sleep(0)  # NOTE: close has begun, and waits for the reload's load
    BuildsWhenReleased.released(group).set()
    with pytest.raises(ShuttingDown):
        await reload
    await closing
    assert discarded == ["m1:1"]
