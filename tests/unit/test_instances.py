"""A version with ``instances: 2`` runs two passes at once, on one copy of its weights:
the first instance's with torch's threads less one for each other pass, the others' on one
thread (``registry.instances``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from registry.threads import WIDE_EVIDENCE
from tests.factories import MeetsItsTwin, RecordsThreads, echo_model, write_manifest
from tests.support import Start, make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


FOUR = {"torch_threads": 4}
"""``REGISTRY_TORCH_THREADS``: neither the loaders' one nor, on a small machine, the cores."""


async def test_two_instances_run_two_passes_at_once_and_only_the_first_on_several_threads(
    tmp_path: Path, start: Start
) -> None:
    weights = tmp_path / "weights"
    twin = echo_model(weights, "twin", "MeetsItsTwin", group=str(tmp_path))
    write_manifest(tmp_path, [twin | {"instances": 2, "warmup": False}])
    serving = await start(make_settings(tmp_path, **FOUR))
    assert await serving.repository.wait_loaded() == []
    began = MeetsItsTwin.began[str(tmp_path)]
    with serving.registry.lease("twin", None) as model:
        inputs = np.ones((1, 4), dtype=np.float32)
        for _ in range(WIDE_EVIDENCE + 1):
            began.clear()
            first = asyncio.create_task(model.infer(inputs))
            assert await asyncio.to_thread(began.wait, 10)
            # NOTE: each pass returns only once the other runs too: with one instance, or
            # one thread for both, the barrier would time out and both would fail
            second = await model.infer(inputs * 2)
            np.testing.assert_array_equal(await first, inputs)
            np.testing.assert_array_equal(second, inputs * 2)
        assert model.passes.frozen().counts[0] == 2 * (WIDE_EVIDENCE + 1)  # all counted
    # on the first instance: one thread until its passes have shown they are long (each
    # waits for its twin), then all four; beside it, one
    assert MeetsItsTwin.threads[str(tmp_path)] == [1, 1] * WIDE_EVIDENCE + [4, 1]


async def test_a_version_is_built_and_warmed_up_on_one_thread_and_served_on_all(
    tmp_path: Path, start: Start
) -> None:
    """Loader threads never run multi-threaded regions, so their OpenMP workers never
    outnumber the cores beside the inference threads' (``registry.repository.loader``)."""
    weights = tmp_path / "weights"
    model = echo_model(weights, "records", "RecordsThreads", group=str(tmp_path))
    write_manifest(tmp_path, [model | {"warmup": True}])
    serving = await start(make_settings(tmp_path, **FOUR))
    assert await serving.repository.wait_loaded() == []
    with serving.registry.lease("records", None) as loaded:
        for _ in range(WIDE_EVIDENCE + 1):
            await loaded.infer(np.ones((1, 4), dtype=np.float32))
    recorded = RecordsThreads.threads[str(tmp_path)]
    served = recorded[-WIDE_EVIDENCE - 1 :]  # on the version's inference thread
    assert recorded[0] == ("build", 1)
    assert ("pass", 1) in recorded[1 : -len(served)]  # the warm-up, on the loader thread
    # one thread until its passes have shown they are long (warm-up's are no evidence)
    assert served == [("pass", 1)] * WIDE_EVIDENCE + [("pass", 4)]
