from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from registry.errors import (
    ManifestError,
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    ShuttingDown,
    VersionNotFound,
)
from registry.settings import Settings
from registry.table import VersionState
from tests.factories import affine_model, echo_model, write_manifest
from tests.support import Start, make_settings, running

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_loads_every_version_then_is_ready(settings: Settings, start: Start) -> None:
    serving = await start(settings)
    assert not serving.registry.ready
    assert await serving.repository.wait_loaded() == []
    status = serving.registry.status()
    assert status.ready
    states = {v.key.version: v.state for v in status.models["lin"].versions}
    assert states == {"1": VersionState.READY, "2": VersionState.READY}


async def test_lease_resolves_default_alias_and_version(settings: Settings, start: Start) -> None:
    serving = await start(settings)
    await serving.repository.wait_loaded()
    registry = serving.registry
    for requested, concrete in ((None, "2"), ("stable", "1"), ("1", "1"), ("2", "2")):
        with registry.lease("lin", requested) as model:
            assert model.version == concrete
            assert model.leases == 1
            out = await model.infer(np.zeros((1, 4), dtype=np.float32))
            assert out.shape == (1, 3)
        assert model.leases == 0
    with pytest.raises(ModelNotFound) as missing:
        registry.lease("nope").__enter__()
    assert missing.value.details["available"] == ["lin"]
    with pytest.raises(VersionNotFound) as no_version:
        registry.lease("lin", "3").__enter__()
    assert no_version.value.details["available"] == ["1", "2"]


async def test_a_model_still_loading_answers_model_loading(
    tmp_path: Path, weights: Path, start: Start
) -> None:
    write_manifest(
        tmp_path,
        [
            affine_model(weights, "fast", ("1",)),
            echo_model(weights, "slow", "SlowToBuild", seconds=1.0),
        ],
    )
    serving = await start(make_settings(tmp_path))
    with pytest.raises(ModelLoading) as caught:  # NOTE: slow takes a second to build
        serving.registry.lease("slow").__enter__()
    assert caught.value.retry_after_s >= 1
    assert not serving.registry.ready
    await serving.repository.wait_loaded()
    with serving.registry.lease("slow") as model:
        assert model.name == "slow"


async def test_failed_versions_are_reported_and_refused(
    tmp_path: Path, weights: Path, start: Start
) -> None:
    broken = affine_model(weights, "broken", ("1",))
    broken["versions"][0]["sha256"] = "f" * 64
    write_manifest(tmp_path, [affine_model(weights, "good", ("1",)), broken])
    lenient = await start(make_settings(tmp_path, strict_startup=False))
    (failure,) = await lenient.repository.wait_loaded()
    assert (failure.model, failure.version) == ("broken", "1")
    assert "sha256" in failure.reason
    assert lenient.registry.ready  # non-strict: serve the rest
    with pytest.raises(ModelUnavailable, match="failed to load"):
        lenient.registry.lease("broken").__enter__()
    with lenient.registry.lease("good"):
        pass

    strict = await start(make_settings(tmp_path, strict_startup=True))
    assert len(await strict.repository.wait_loaded()) == 1
    assert not strict.registry.ready


async def test_invalid_manifest_fails_start(tmp_path: Path, start: Start) -> None:
    (tmp_path / "models.yaml").write_text("models: [{name: x}]\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="x: versions: Field required"):
        await start(make_settings(tmp_path))


async def test_close_releases_every_model(settings: Settings) -> None:
    async with running(settings) as serving:
        await serving.repository.wait_loaded()
        registry = serving.registry
        refs: list[weakref.ref[Any]] = []
        for entry in registry.table.values():
            for slot in entry.versions.values():
                assert slot.model is not None
                refs += [weakref.ref(slot.model), weakref.ref(slot.model.module)]
        del entry, slot
    gc.collect()
    assert refs
    assert all(ref() is None for ref in refs)
    assert registry.table == {}
    with pytest.raises(ShuttingDown):
        registry.lease("lin").__enter__()


async def test_a_second_stop_waits_for_the_first_to_end(settings: Settings, start: Start) -> None:
    """Shutdown may stop a version that an eviction is stopping: neither may go on to
    release its weights while the threads may still run a pass on them."""
    serving = await start(settings)
    await serving.repository.wait_loaded()
    model = serving.registry.table["lin"].versions["1"].model
    assert model is not None
    ended = asyncio.Event()
    real = model._batcher
    assert real is not None

    class SlowToStop:
        async def stop(self) -> None:
            await ended.wait()
            assert real is not None
            await real.stop()

    model._batcher = SlowToStop()  # type: ignore[assignment]
    first = asyncio.ensure_future(model.stop())
    second = asyncio.ensure_future(model.stop())
    await asyncio.sleep(0)
    assert not first.done()
    assert not second.done()
    ended.set()
    await asyncio.gather(first, second)
