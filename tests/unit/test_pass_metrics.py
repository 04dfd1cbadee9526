"""Queue time apart from compute time: a slow model shows long passes, a busy one long
waits, per version in ``/metrics``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry.metrics import Metrics
from tests.factories import FEATURES, echo_model, write_manifest
from tests.support import Running, Start, make_settings

pytestmark = pytest.mark.anyio

SLEEP_S = 0.05


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def started(tmp_path: Path, start: Start) -> Running:
    model = echo_model(tmp_path / "weights", "slow", "Sleepy", seconds=SLEEP_S)
    write_manifest(tmp_path, [model | {"warmup": False, "batching": {"max_batch_size": 1}}])
    serving = await start(make_settings(tmp_path))
    assert await serving.repository.wait_loaded() == []
    return serving


async def test_requests_that_queue_behind_a_pass_show_their_wait(
    tmp_path: Path, start: Start
) -> None:
    serving = await started(tmp_path, start)
    row = np.zeros((1, FEATURES), np.float32)

    with serving.registry.lease("slow") as model:
        await asyncio.gather(*(model.infer(row) for _ in range(4)))

    (version,) = serving.registry.status().versions()
    assert version.pass_seconds is not None
    assert version.queue_seconds is not None
    pass_counts, pass_total = version.pass_seconds.counts, version.pass_seconds.total
    queue_counts, queue_total = version.queue_seconds.counts, version.queue_seconds.total
    # NOTE: one row per pass (max_batch_size 1): four passes, one after another, so the
    # last request waited behind three passes of at least SLEEP_S each.
    assert sum(pass_counts) == 4
    assert sum(queue_counts) == 4
    assert pass_total >= 4 * SLEEP_S
    assert queue_total >= (1 + 2 + 3) * SLEEP_S
    text = Metrics(
        serving.registry.status, serving.repository.reload_outcomes, serving.repository.loads
    ).render()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.labels.get("model") == "slow" and "le" not in sample.labels
    }
    assert samples["registry_pass_seconds_count"] == 4
    assert samples["registry_queue_seconds_count"] == 4
    assert samples["registry_queue_seconds_sum"] == pytest.approx(queue_total)
