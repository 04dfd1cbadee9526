from __future__ import annotations

import asyncio
import gc
import io
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from registry.core import ModelRegistry
from registry.errors import ManifestError, ReloadFailed, RemovesEveryModel
from registry.metrics import Metrics
from registry.model import LoadedModel
from registry.table import VersionState
from tests.factories import (
    Affine,
    affine_model,
    affine_outputs,
    echo_model,
    write_manifest,
    write_state_dict,
)
from tests.support import Running, make_settings, running

pytestmark = pytest.mark.anyio
X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def serving(tmp_path: Path, weights: Path) -> AsyncIterator[Running]:
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1", "2"), aliases={"stable": "1"})])
    async with running(make_settings(tmp_path)) as started:
        assert await started.repository.wait_loaded() == []
        yield started


def give_lin_2_new_weights(directory: Path, weights: Path, seed: int) -> None:
    """Rewrite lin:2's weight file as ``Affine(seed)``; the manifest changes only its sha256."""
    entry = affine_model(weights, "lin", ("1", "2"), aliases={"stable": "1"})
    entry["versions"][1]["sha256"] = write_state_dict(
        weights, "lin/2/model.safetensors", Affine(seed=seed)
    )
    write_manifest(directory, [entry])


async def predict(registry: ModelRegistry, name: str = "lin", version: str | None = None) -> Any:
    with registry.lease(name, version) as model:
        return model.version, await model.infer(X)


def models_of(registry: ModelRegistry) -> dict[str, LoadedModel]:
    return {
        f"{name}:{v}": slot.model
        for name, entry in registry.table.items()
        for v, slot in entry.versions.items()
        if slot.model is not None
    }


async def test_an_unchanged_manifest_touches_nothing(serving: Running) -> None:
    before = models_of(serving.registry)
    report = await serving.repository.reload(actor="test")
    assert report.applied
    assert sorted(report.unchanged) == ["lin:1", "lin:2"]
    assert report.loads == []
    assert report.added == report.reloaded == report.removed == []
    assert models_of(serving.registry) == before  # the very same objects


async def test_the_first_reload_hashes_no_file_start_up_already_read(
    serving: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    import registry.weightfiles as weightfiles

    # NOTE: every read of a weight file, to hash it or to load it, opens it through here
    opened: list[Path] = []
    real = weightfiles.open_confined

    def counted(path: Path, shown: str) -> io.BufferedReader:
        opened.append(path)
        return real(path, shown)

    monkeypatch.setattr(weightfiles, "open_confined", counted)
    report = await serving.repository.reload(actor="test")
    assert sorted(report.unchanged) == ["lin:1", "lin:2"]
    assert opened == []


async def test_changed_weights_reload_that_version_only(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    before = models_of(serving.registry)
    give_lin_2_new_weights(tmp_path, weights, seed=7)
    report = await serving.repository.reload(actor="test")
    assert report.reloaded == ["lin:2"]
    assert report.unchanged == ["lin:1"]
    assert [t.version for t in report.loads] == ["lin:2"]
    assert report.loads[0].load_ms > 0
    after = models_of(serving.registry)
    assert after["lin:1"] is before["lin:1"]
    assert after["lin:2"] is not before["lin:2"]
    version, out = await predict(serving.registry)
    assert version == "2"
    np.testing.assert_allclose(out, affine_outputs(X, 7), rtol=1e-6)


async def test_alias_and_default_changes_load_nothing(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    before = models_of(serving.registry)
    write_manifest(
        tmp_path,
        [affine_model(weights, "lin", ("1", "2"), aliases={"stable": "2"}, default_version="1")],
    )
    report = await serving.repository.reload(actor="test")
    assert report.loads == []
    assert {(m.alias, m.before, m.after) for m in report.alias_moves} == {
        ("stable", "1", "2"),
        ("(default)", "2", "1"),
    }
    assert models_of(serving.registry) == before
    assert (await predict(serving.registry))[0] == "1"
    assert (await predict(serving.registry, version="stable"))[0] == "2"


async def test_added_and_removed_models(serving: Running, tmp_path: Path, weights: Path) -> None:
    entry = affine_model(weights, "lin", ("1",))
    write_manifest(tmp_path, [entry, affine_model(weights, "other", ("3",))])
    report = await serving.repository.reload(actor="test")
    assert report.added == ["other:3"]
    assert report.removed == ["lin:2"]
    assert list(serving.registry.table) == ["lin", "other"]
    np.testing.assert_allclose(
        (await predict(serving.registry, "other"))[1], affine_outputs(X, 3), rtol=1e-6
    )


async def test_removing_every_model_needs_to_be_asked_for(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    write_manifest(tmp_path, [affine_model(weights, "other", ("3",))])
    with pytest.raises(RemovesEveryModel, match="keeps none of the models served now"):
        await serving.repository.reload(actor="test")
    assert list(serving.registry.table) == ["lin"]
    assert serving.repository.reload_outcomes["removes_every_model"] == 1
    report = await serving.repository.reload(actor="test", allow_remove_all=True)
    assert sorted(report.removed) == ["lin:1", "lin:2"]
    assert list(serving.registry.table) == ["other"]


async def test_replacing_every_version_of_a_model_is_not_removing_it(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    write_manifest(tmp_path, [affine_model(weights, "lin", ("3",))])
    report = await serving.repository.reload(actor="test")
    assert (report.added, sorted(report.removed)) == (["lin:3"], ["lin:1", "lin:2"])


def _invalid_yaml(directory: Path, _: Path) -> None:
    (directory / "models.yaml").write_text("models: [\n  - name: lin\n", encoding="utf-8")


def _schema_error(directory: Path, weights: Path) -> None:
    write_manifest(directory, [affine_model(weights, "lin", ("1",), device="tpu")])


def _missing_file(directory: Path, weights: Path) -> None:
    entry = affine_model(weights, "lin", ("1", "2"))
    entry["versions"].append({"version": "3", "format": "torchscript", "path": "nowhere.pt"})
    write_manifest(directory, [entry])


def _corrupt_file(directory: Path, weights: Path) -> None:
    entry = affine_model(weights, "lin", ("1", "2"))
    (weights / "junk.pt").write_bytes(b"\x00not a torchscript archive")
    entry["versions"].append({"version": "3", "format": "torchscript", "path": "junk.pt"})
    write_manifest(directory, [entry])


def _checksum_mismatch(directory: Path, weights: Path) -> None:
    entry = affine_model(weights, "lin", ("1", "2", "3"))
    entry["versions"][2]["sha256"] = "e" * 64
    write_manifest(directory, [entry])


def _architecture_error(directory: Path, weights: Path) -> None:
    entry = affine_model(weights, "lin", ("1", "2", "3"))
    entry["versions"][2]["architecture_args"] = {"features": 9}
    write_manifest(directory, [entry])


def _warmup_error(directory: Path, weights: Path) -> None:
    write_manifest(
        directory,
        [affine_model(weights, "lin", ("1", "2")), echo_model(weights, "flat", "NoBatchAxis")],
    )


FAILURES: list[Any] = [
    pytest.param(_invalid_yaml, ManifestError, "not valid YAML", id="invalid-yaml"),
    pytest.param(_schema_error, ManifestError, "lin: device", id="schema"),
    pytest.param(
        _missing_file, ReloadFailed, "lin:3: no weight file 'nowhere.pt'", id="missing-file"
    ),
    pytest.param(
        _corrupt_file, ReloadFailed, "lin:3: lin:3 failed during loading", id="corrupt-file"
    ),
    pytest.param(_checksum_mismatch, ReloadFailed, "lin:3: sha256", id="checksum"),
    pytest.param(_architecture_error, ReloadFailed, "size mismatch", id="architecture"),
    pytest.param(_warmup_error, ReloadFailed, "flat:1: flat:1 failed during warm-up", id="warm-up"),
]


@pytest.mark.parametrize(("damage", "error", "reason"), FAILURES)
async def test_a_failed_reload_changes_nothing(
    serving: Running,
    tmp_path: Path,
    weights: Path,
    damage: Callable[[Path, Path], None],
    error: type[Exception],
    reason: str,
) -> None:
    before = models_of(serving.registry)
    outputs = {v: (await predict(serving.registry, version=v))[1] for v in ("1", "2")}
    damage(tmp_path, weights)
    with pytest.raises(error, match=reason) as caught:
        await serving.repository.reload(actor="test")
    if isinstance(caught.value, ReloadFailed):
        report = caught.value.details["report"]
        assert isinstance(report, dict)
        assert report["applied"] is False
        assert report["failed"]
    assert models_of(serving.registry) == before
    for version, expected in outputs.items():
        np.testing.assert_array_equal(
            (await predict(serving.registry, version=version))[1], expected
        )
    assert not serving.registry.status().draining


async def test_dry_run_plans_without_loading(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    before = models_of(serving.registry)
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1", "2", "3"))])
    report = await serving.repository.reload(actor="test", dry_run=True)
    assert (report.dry_run, report.applied) == (True, False)
    assert report.added == ["lin:3"]
    assert report.loads == []
    assert models_of(serving.registry) == before


async def test_a_leased_version_drains_before_release(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1",))])
    with serving.registry.lease("lin", "2") as held:
        await serving.repository.reload(actor="test")
        assert held.retired
        assert [v.key for v in serving.registry.status().draining] == [held.key]
        np.testing.assert_allclose(
            await held.infer(X), affine_outputs(X, 2), rtol=1e-6
        )  # still serves
    await serving.background.settled()
    assert not serving.registry.status().draining
    with pytest.raises(RuntimeError, match="not started"):
        await held.infer(X)


async def test_concurrent_reloads_are_serialised(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    write_manifest(tmp_path, [affine_model(weights, "lin", ("1", "2", "3"))])
    first, second = await asyncio.gather(
        serving.repository.reload(actor="a"), serving.repository.reload(actor="b")
    )
    assert first.added == ["lin:3"]
    assert second.added == []  # the second saw the table the first had installed
    assert "lin:3" in second.unchanged


async def test_a_version_that_failed_at_startup_is_retried(tmp_path: Path, weights: Path) -> None:
    entry = affine_model(weights, "lin", ("1",))
    write_manifest(tmp_path, [entry])
    (weights / "lin/1/model.safetensors").rename(weights / "parked")
    async with running(make_settings(tmp_path, strict_startup=False)) as serving:
        assert len(await serving.repository.wait_loaded()) == 1
        (weights / "parked").rename(weights / "lin/1/model.safetensors")
        report = await serving.repository.reload(actor="test")
        assert report.reloaded == ["lin:1"]
        assert serving.registry.status().in_state(VersionState.FAILED) == []


async def test_fifty_reload_cycles_leave_no_retired_model_reachable(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    refs: list[weakref.ref[Any]] = []
    for cycle in range(50):
        current = models_of(serving.registry)["lin:2"]
        refs += [weakref.ref(current), weakref.ref(current.module)]
        del current
        give_lin_2_new_weights(tmp_path, weights, seed=100 + cycle)
        assert (await serving.repository.reload(actor="test")).reloaded == ["lin:2"]
    await serving.background.settled()
    gc.collect()
    assert len(refs) == 100
    assert sum(ref() is not None for ref in refs) == 0


async def test_concurrent_requests_batch_into_outputs_equal_to_unbatched(
    serving: Running,
) -> None:
    inputs = np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32)
    with serving.registry.lease("lin", "2") as model:
        alone = [model.forward_blocking(row[np.newaxis]) for row in inputs]
        together = await asyncio.gather(*(model.infer(row[np.newaxis]) for row in inputs))
    for expected, got in zip(alone, together, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


async def test_in_flight_metric_is_one_series_while_a_reloaded_version_drains(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    give_lin_2_new_weights(tmp_path, weights, seed=9)
    with serving.registry.lease("lin", "2") as held:
        await serving.repository.reload(actor="test")
        assert [v.key for v in serving.registry.status().draining] == [held.key]
        with serving.registry.lease("lin", "2"):
            metrics = Metrics(
                serving.registry.status,
                serving.repository.reload_outcomes,
                serving.repository.loads,
            )
            text = metrics.render().decode()
    samples = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "registry_in_flight_requests"
        and sample.labels == {"model": "lin", "version": "2"}
    ]
    assert [sample.value for sample in samples] == [2.0]


async def test_a_released_version_gives_its_tensors_back_at_once(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    retired = models_of(serving.registry)["lin:2"]
    module = retired.module
    assert isinstance(module, torch.nn.Module)
    parameters = list(module.parameters())
    assert all(p.numel() for p in parameters)
    give_lin_2_new_weights(tmp_path, weights, seed=11)
    await serving.repository.reload(actor="test")
    await serving.background.settled()
    # NOTE: no collection ran: the storage went back even though references remain
    assert all(p.untyped_storage().nbytes() == 0 for p in parameters)
    with pytest.raises(RuntimeError, match="released"):
        retired.forward_blocking(X)


async def test_the_status_is_a_snapshot_that_later_changes_leave_alone(
    serving: Running, tmp_path: Path, weights: Path
) -> None:
    with serving.registry.lease("lin", "2"):
        during = serving.registry.status()
    give_lin_2_new_weights(tmp_path, weights, seed=12)
    await serving.repository.reload(actor="test")
    after = serving.registry.status()
    lin_2 = during.models["lin"].versions[1]
    assert (lin_2.key, lin_2.leases, lin_2.state) == (("lin", "2"), 1, VersionState.READY)
    assert lin_2.aliases == ("default",)
    assert during.models["lin"].versions[0].aliases == ("stable",)
    assert lin_2.fingerprint != after.models["lin"].versions[1].fingerprint
    assert after.models["lin"].versions[1].leases == 0
    assert during.serving("lin", "stable").key == ("lin", "1")
