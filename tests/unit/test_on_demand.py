"""Lazy versions, single-flight loads, back-off, the memory budget and eviction, in-process.

Loads are counted from the repository's own tally, and concurrency is made by starting
requests together, never by the clock.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from registry.budget import EvictionReason
from registry.errors import (
    MemoryBudgetExceeded,
    ModelLoadFailed,
    ModelUnavailable,
    ModelUnloaded,
)
from registry.keys import VersionKey
from registry.model import LoadedModel
from registry.repository import loader
from registry.table import VersionState
from tests.factories import (
    FEATURES,
    LIN_INPUT,
    Affine,
    affine_model,
    affine_outputs,
    model_entry,
    parameterless_version,
    state_dict_version,
    write_manifest,
    write_state_dict,
)
from tests.support import Running, Start, make_settings

pytestmark = pytest.mark.anyio

AFFINE_BYTES = (FEATURES * 3 + 3) * 4
"""What one ``Affine`` version holds (and is charged): a 3x4 weight and a bias, float32."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def states(serving: Running) -> dict[str, VersionState]:
    return {str(v.key): v.state for v in serving.registry.status().versions()}


def loads(serving: Running, model: str) -> int:
    tally = serving.repository.loads.outcomes
    return tally[model, "loaded"] + tally[model, "failed"]


async def lease_for_request(serving: Running, name: str, version: str | None = None) -> Any:
    """What both doors do: lease, and load first where a request may."""
    return await serving.repository.on_demand.lease(name, version)


async def predict(serving: Running, name: str, version: str | None = None) -> np.ndarray:
    with await lease_for_request(serving, name, version) as model:
        answer: np.ndarray = await model.infer(np.asarray([LIN_INPUT], np.float32))
        return answer


def lazy_models(weights: Path, count: int, **extra: Any) -> list[dict[str, Any]]:
    return [affine_model(weights, f"m{i}", ("1",), load="lazy", **extra) for i in range(count)]


async def test_a_lazy_version_loads_on_its_first_request_and_only_then(
    tmp_path: Path, start: Start
) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1", "2"), load="lazy")])
    serving = await start(make_settings(tmp_path))
    assert await serving.repository.wait_loaded() == []
    assert serving.registry.ready
    assert states(serving) == {"lin:1": VersionState.UNLOADED, "lin:2": VersionState.UNLOADED}
    assert loads(serving, "lin") == 0

    answer = await predict(serving, "lin", "2")

    np.testing.assert_allclose(answer, affine_outputs([LIN_INPUT], 2), rtol=1e-6)
    assert states(serving) == {"lin:1": VersionState.UNLOADED, "lin:2": VersionState.READY}
    assert loads(serving, "lin") == 1


async def test_concurrent_first_requests_share_one_load(tmp_path: Path, start: Start) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",), load="lazy")])
    serving = await start(make_settings(tmp_path))
    await serving.repository.wait_loaded()

    answers = await asyncio.gather(*(predict(serving, "lin") for _ in range(20)))

    assert loads(serving, "lin") == 1
    for answer in answers:
        np.testing.assert_allclose(answer, affine_outputs([LIN_INPUT], 1), rtol=1e-6)


async def test_a_failed_lazy_load_is_retried_only_after_a_back_off(
    tmp_path: Path, start: Start
) -> None:
    group = uuid.uuid4().hex
    version = parameterless_version(
        tmp_path / "weights",
        "broken",
        "tests.factories:FailsToBuild",
        architecture_args={"group": group},
    )
    write_manifest(tmp_path, [model_entry("broken", [version], load="lazy")])
    serving = await start(make_settings(tmp_path))
    await serving.repository.wait_loaded()

    with pytest.raises(ModelUnavailable) as first:
        await lease_for_request(serving, "broken")
    with pytest.raises(ModelUnavailable) as second:
        await lease_for_request(serving, "broken")

    assert first.value.retry_after_s >= 1
    assert "cannot be built" in str(first.value.details["reason"])
    assert second.value.retry_after_s >= 1
    assert loads(serving, "broken") == 1, "a request during the back-off tried to load again"
    # NOTE: an operator's load does not wait for the back-off.
    with pytest.raises(Exception, match="cannot be built"):
        await serving.repository.on_demand.load(VersionKey("broken", "1"))
    assert loads(serving, "broken") == 2


async def test_the_budget_evicts_the_least_recently_used_idle_version(
    tmp_path: Path, start: Start
) -> None:
    write_manifest(tmp_path, lazy_models(tmp_path / "weights", 3))
    serving = await start(make_settings(tmp_path, memory_budget_bytes=2 * AFFINE_BYTES))
    await serving.repository.wait_loaded()

    await predict(serving, "m0")
    await predict(serving, "m1")
    await predict(serving, "m0")  # NOTE: m1 is now the least recently used
    await predict(serving, "m2")

    status = serving.registry.status()
    assert states(serving) == {
        "m0:1": VersionState.READY,
        "m1:1": VersionState.UNLOADED,
        "m2:1": VersionState.READY,
    }
    assert status.memory["cpu"].charged == 2 * AFFINE_BYTES
    evicted = next(v for v in status.versions() if v.key == ("m1", "1"))
    assert evicted.last_eviction == EvictionReason.MEMORY_BUDGET
    assert serving.registry.evictions == {("m1", EvictionReason.MEMORY_BUDGET): 1}
    # NOTE: an evicted version is loaded again by its next request.
    np.testing.assert_allclose(await predict(serving, "m1"), affine_outputs([LIN_INPUT], 1))


async def test_leased_and_resident_versions_are_never_evicted(tmp_path: Path, start: Start) -> None:
    weights = tmp_path / "weights"
    models = [
        affine_model(weights, "pinned", ("1",), load="lazy", resident=True),
        *lazy_models(weights, 2),
    ]
    write_manifest(tmp_path, models)
    serving = await start(make_settings(tmp_path, memory_budget_bytes=2 * AFFINE_BYTES))
    await serving.repository.wait_loaded()
    await predict(serving, "pinned")

    with await lease_for_request(serving, "m0") as held:
        with pytest.raises(MemoryBudgetExceeded) as refused:
            await lease_for_request(serving, "m1")
        answer = await held.infer(np.asarray([LIN_INPUT], np.float32))

    np.testing.assert_allclose(answer, affine_outputs([LIN_INPUT], 1), rtol=1e-6)
    assert refused.value.retry_after_s >= 1
    assert states(serving)["pinned:1"] is VersionState.READY
    assert states(serving)["m0:1"] is VersionState.READY
    assert serving.registry.status().memory["cpu"].charged <= 2 * AFFINE_BYTES
    # NOTE: once the lease is given back, m0 is idle and makes room.
    await predict(serving, "m1")
    assert states(serving)["m0:1"] is VersionState.UNLOADED


async def test_a_version_larger_than_the_whole_budget_fails_to_load(
    tmp_path: Path, start: Start
) -> None:
    write_manifest(tmp_path, lazy_models(tmp_path / "weights", 1))
    serving = await start(make_settings(tmp_path, memory_budget_bytes=AFFINE_BYTES - 1))
    await serving.repository.wait_loaded()

    with pytest.raises(ModelUnavailable, match="failed to load") as refused:
        await lease_for_request(serving, "m0")

    assert "more than the whole memory budget" in str(refused.value.details["reason"])
    assert serving.registry.status().memory["cpu"].charged == 0


async def test_a_version_larger_than_the_budget_evicts_nothing_on_its_way_to_failing(
    tmp_path: Path, start: Start
) -> None:
    weights = tmp_path / "weights"
    write_state_dict(weights, "wide/1/model.safetensors", Affine(features=64, seed=1))
    wide = state_dict_version("1", "wide/1/model.safetensors", "Affine", features=64, seed=1)
    models = [*lazy_models(weights, 2), model_entry("wide", [wide], shape=(64,), load="lazy")]
    write_manifest(tmp_path, models)
    serving = await start(make_settings(tmp_path, memory_budget_bytes=2 * AFFINE_BYTES))
    await serving.repository.wait_loaded()
    await predict(serving, "m0")
    await predict(serving, "m1")

    for _ in range(2):  # NOTE: the second time, its size is known: it is not even loaded
        with pytest.raises(Exception, match="more than the whole memory budget"):
            await serving.repository.on_demand.load(VersionKey("wide", "1"))

    assert states(serving)["m0:1"] is VersionState.READY
    assert states(serving)["m1:1"] is VersionState.READY
    assert serving.registry.evictions == {}


async def test_eager_versions_over_the_budget_load_and_make_room(
    tmp_path: Path, start: Start
) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1", "2", "3"))])
    serving = await start(make_settings(tmp_path, memory_budget_bytes=2 * AFFINE_BYTES))

    assert await serving.repository.wait_loaded() == []

    # NOTE: which one was evicted depends on which load finished first.
    assert sorted(states(serving).values()) == [
        VersionState.READY,
        VersionState.READY,
        VersionState.UNLOADED,
    ]
    assert serving.registry.status().memory["cpu"].charged == 2 * AFFINE_BYTES


async def test_resident_versions_over_the_budget_fail_at_start_up(
    tmp_path: Path, start: Start
) -> None:
    models = [affine_model(tmp_path / "weights", "lin", ("1", "2", "3"), resident=True)]
    write_manifest(tmp_path, models)
    serving = await start(make_settings(tmp_path, memory_budget_bytes=2 * AFFINE_BYTES))

    failures = await serving.repository.wait_loaded()

    assert len(failures) == 1
    assert "nothing idle can be evicted" in failures[0].reason
    assert not serving.registry.ready  # NOTE: strict start-up
    assert serving.registry.status().memory["cpu"].charged == 2 * AFFINE_BYTES


async def test_an_unloaded_eager_version_stays_unloaded_until_loaded(
    tmp_path: Path, start: Start
) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",))])
    serving = await start(make_settings(tmp_path))
    await serving.repository.wait_loaded()
    key = VersionKey("lin", "1")

    serving.repository.on_demand.unload(key)

    with pytest.raises(ModelUnloaded):
        await lease_for_request(serving, "lin")
    assert states(serving) in (
        {"lin:1": VersionState.UNLOADED},
        {"lin:1": VersionState.EVICTING},
    )
    await serving.repository.on_demand.load(key)
    np.testing.assert_allclose(await predict(serving, "lin"), affine_outputs([LIN_INPUT], 1))


async def test_an_unexpected_error_in_a_load_fails_that_load_and_no_more(
    tmp_path: Path, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a ``RegistryError`` (a device that cannot be asked, say): the version is
    failed, not left loading for good, and the next load, its cause gone, succeeds."""
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1",))])
    serving = await start(make_settings(tmp_path))
    await serving.repository.wait_loaded()
    key = VersionKey("lin", "1")
    serving.repository.on_demand.unload(key)

    def unanswerable(_: object) -> str:
        raise RuntimeError("the device cannot be asked")

    with monkeypatch.context() as patched:
        patched.setattr(loader, "device_key", unanswerable)
        with pytest.raises(ModelLoadFailed, match="RuntimeError: the device cannot be asked"):
            await serving.repository.on_demand.load(key)
    assert states(serving) == {"lin:1": VersionState.FAILED}
    await serving.repository.on_demand.load(key)
    np.testing.assert_allclose(await predict(serving, "lin"), affine_outputs([LIN_INPUT], 1))


async def test_unloading_an_evicted_eager_version_keeps_requests_from_loading_it(
    tmp_path: Path, start: Start
) -> None:
    write_manifest(tmp_path, [affine_model(tmp_path / "weights", "lin", ("1", "2", "3"))])
    serving = await start(make_settings(tmp_path, memory_budget_bytes=2 * AFFINE_BYTES))
    await serving.repository.wait_loaded()
    evicted = next(key for key, state in states(serving).items() if state is VersionState.UNLOADED)
    name, version = evicted.split(":")

    serving.repository.on_demand.unload(VersionKey(name, version))

    with pytest.raises(ModelUnloaded):
        await lease_for_request(serving, name, version)


async def test_a_reload_keeps_what_it_does_not_change_unloaded(
    tmp_path: Path, start: Start
) -> None:
    weights = tmp_path / "weights"
    write_manifest(
        tmp_path,
        [
            affine_model(weights, "eager", ("1",)),
            affine_model(weights, "lazy", ("1", "2"), load="lazy"),
        ],
    )
    serving = await start(make_settings(tmp_path))
    await serving.repository.wait_loaded()
    serving.repository.on_demand.unload(VersionKey("eager", "1"))
    await predict(serving, "lazy", "2")
    await serving.background.settled()

    report = await serving.repository.reload(actor="test")

    assert report.reloaded == []
    assert report.added == []
    assert states(serving) == {
        "eager:1": VersionState.UNLOADED,
        "lazy:1": VersionState.UNLOADED,
        "lazy:2": VersionState.READY,
    }


async def test_a_reload_defers_changed_lazy_versions_unless_they_are_in_use(
    tmp_path: Path, start: Start
) -> None:
    weights = tmp_path / "weights"
    write_manifest(tmp_path, [affine_model(weights, "lazy", ("1", "2"), load="lazy")])
    serving = await start(make_settings(tmp_path))
    await serving.repository.wait_loaded()
    await predict(serving, "lazy", "2")
    for version, seed in (("1", 11), ("2", 12)):  # NOTE: new weights for both versions
        write_state_dict(weights, f"lazy/{version}/model.safetensors", Affine(seed=seed))
    entries = [
        state_dict_version(v, f"lazy/{v}/model.safetensors", "Affine", seed=s)
        for v, s in (("1", 11), ("2", 12))
    ]
    write_manifest(tmp_path, [model_entry("lazy", entries, load="lazy")])

    report = await serving.repository.reload(actor="test")

    assert sorted(report.reloaded) == ["lazy:1", "lazy:2"]
    assert report.deferred == ["lazy:1"]
    assert states(serving) == {"lazy:1": VersionState.UNLOADED, "lazy:2": VersionState.READY}
    np.testing.assert_allclose(
        await predict(serving, "lazy", "2"), affine_outputs([LIN_INPUT], 12), rtol=1e-6
    )
    np.testing.assert_allclose(
        await predict(serving, "lazy", "1"), affine_outputs([LIN_INPUT], 11), rtol=1e-6
    )


async def test_load_unload_cycles_give_memory_back(tmp_path: Path, start: Start) -> None:
    """50 cycles of a 4 MiB version: RSS grows by less than 50 MB and no model survives."""
    weights = tmp_path / "weights"
    path = "big/1/model.safetensors"
    write_state_dict(weights, path, Affine(features=1024, classes=1024, seed=0))
    version = state_dict_version("1", path, "Affine", features=1024, classes=1024)
    write_manifest(tmp_path, [model_entry("big", [version], shape=(1024,), load="lazy")])
    serving = await start(make_settings(tmp_path))
    await serving.repository.wait_loaded()
    key = VersionKey("big", "1")
    on_demand = serving.repository.on_demand

    async def cycle() -> weakref.ref[LoadedModel]:
        await on_demand.load(key)
        model = serving.registry.table["big"].versions["1"].model
        assert model is not None
        assert model.memory_bytes >= 4 * 1024 * 1024
        held = weakref.ref(model)
        del model
        on_demand.unload(key)
        await serving.background.settled()
        return held

    await cycle()  # NOTE: the first load pays for imports and allocator pools
    gc.collect()
    before = _rss_bytes()
    held = [await cycle() for _ in range(50)]
    gc.collect()
    grown = _rss_bytes() - before

    assert grown < 50 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB over 50 cycles"
    assert [ref for ref in held if ref() is not None] == []
    assert serving.registry.status().memory["cpu"].charged == 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("lazy", [False, True], ids=["operator-load", "request-load"])
async def test_a_reload_that_only_changes_residence_leaves_a_load_under_way_its_slot(
    tmp_path: Path, start: Start, monkeypatch: pytest.MonkeyPatch, lazy: bool
) -> None:
    """The reload carries the loading slot into a copy with the new ``resident``; the
    load that finishes swaps into that copy, rather than leaving it ``loading`` with no
    load under way, for good (an operator's load), or giving its waiting request up
    (a request's load)."""
    weights = tmp_path / "weights"
    load = {"load": "lazy"} if lazy else {}
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",), **load)])
    serving = await start(make_settings(tmp_path))
    assert await serving.repository.wait_loaded() == []
    key, on_demand = VersionKey("lin", "1"), serving.repository.on_demand
    if not lazy:
        on_demand.unload(key)
    entered, gate, real = asyncio.Event(), asyncio.Event(), serving.repository._loader.load

    async def gated(*args: Any, **kwargs: Any) -> LoadedModel:
        entered.set()
        await gate.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(serving.repository._loader, "load", gated)
    loading = asyncio.ensure_future(predict(serving, "lin") if lazy else on_demand.load(key))
    await entered.wait()
    assert states(serving)["lin:1"] is VersionState.LOADING
    entry = affine_model(weights, "lin", ("1",), **load)
    entry["versions"][0]["resident"] = True
    write_manifest(tmp_path, [entry])
    assert (await serving.repository.reload(actor="test")).unchanged == ["lin:1"]
    gate.set()

    answer = await loading

    if lazy:
        assert answer is not None  # NOTE: a request's answer; an operator's load gives none
        np.testing.assert_allclose(answer, affine_outputs([LIN_INPUT], 1), rtol=1e-6)
    assert states(serving) == {"lin:1": VersionState.READY}
    (slot,) = serving.registry.table["lin"].versions.values()
    assert slot.spec.resident
    np.testing.assert_allclose(
        await predict(serving, "lin"), affine_outputs([LIN_INPUT], 1), rtol=1e-6
    )
