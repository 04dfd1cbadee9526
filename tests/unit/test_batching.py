from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from registry.batching import Array, Batcher
from registry.errors import ModelFailed, QueueFull, ShuttingDown
from registry.keys import VersionKey
from registry.manifest import BatchingSpec

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class GatedForward:
    """Doubles its input; blocks each pass until released, and records batch sizes."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.batches: list[int] = []
        self.entered = threading.Event()  # a pass has started
        self.gate = threading.Event()
        self.fail_on = fail_on

    def __call__(self, inputs: Array) -> Array:
        self.entered.set()
        self.gate.wait(timeout=10)
        self.batches.append(len(inputs))
        if self.fail_on is not None and (inputs == self.fail_on).any():
            raise RuntimeError("boom")
        return inputs * 2


def rows(*values: float) -> Array:
    return np.array([[v] for v in values], dtype=np.float32)


async def started(forward: GatedForward, **config: int) -> Batcher:
    batcher = Batcher(forward, BatchingSpec(**config), key=VersionKey("m", "1"))
    batcher.start()
    return batcher


async def occupied(batcher: Batcher, forward: GatedForward, inputs: Array) -> asyncio.Task[Array]:
    """Submit ``inputs`` and wait until their pass runs (held at the gate): what follows queues."""
    running = asyncio.create_task(batcher.submit(inputs))
    assert await asyncio.to_thread(forward.entered.wait, 10)
    return running


async def until_queued(batcher: Batcher, depth: int) -> None:
    """Let the submitting tasks run until ``depth`` requests wait in the queue."""
    for _ in range(1000):
        if batcher.queue_depth >= depth:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{batcher.queue_depth} queued, expected {depth}")


async def test_idle_request_runs_at_once_and_queued_ones_share_a_pass() -> None:
    forward = GatedForward()
    batcher = await started(forward, max_batch_size=8)
    first = await occupied(batcher, forward, rows(1))
    rest = [asyncio.create_task(batcher.submit(rows(v, v + 0.5))) for v in (2, 3, 4)]
    await until_queued(batcher, 3)
    forward.gate.set()
    results = await asyncio.gather(first, *rest)
    assert forward.batches == [1, 6]
    np.testing.assert_array_equal(results[0], rows(2))
    for value, result in zip((2, 3, 4), results[1:], strict=True):
        np.testing.assert_array_equal(result, rows(2 * value, 2 * value + 1))
    await batcher.stop()


async def test_batches_never_exceed_max_batch_size() -> None:
    forward = GatedForward()
    batcher = await started(forward, max_batch_size=4)
    first = await occupied(batcher, forward, rows(0, 0))
    tasks = [asyncio.create_task(batcher.submit(rows(v, v))) for v in range(1, 6)]
    await until_queued(batcher, 5)
    forward.gate.set()
    await asyncio.gather(first, *tasks)
    assert max(forward.batches) <= 4
    assert sum(forward.batches) == 12
    await batcher.stop()


async def test_a_failed_batch_fails_its_waiters_and_the_next_batch_succeeds() -> None:
    forward = GatedForward(fail_on=-1)
    batcher = await started(forward, max_batch_size=8)
    blocker = await occupied(batcher, forward, rows(0))
    doomed = [asyncio.create_task(batcher.submit(rows(v))) for v in (-1, 5)]
    await until_queued(batcher, 2)
    forward.gate.set()
    await blocker
    for task in doomed:
        with pytest.raises(ModelFailed, match="raised during inference"):
            await task
    np.testing.assert_array_equal(await batcher.submit(rows(7)), rows(14))
    await batcher.stop()


async def test_queue_bound_answers_queue_full() -> None:
    forward = GatedForward()
    batcher = await started(forward, max_batch_size=1, max_queue=2)
    running = await occupied(batcher, forward, rows(0))
    queued = [asyncio.create_task(batcher.submit(rows(v))) for v in (1, 2)]
    await until_queued(batcher, 2)
    with pytest.raises(QueueFull) as caught:
        await batcher.submit(rows(3))
    assert caught.value.details["max_queue"] == 2
    forward.gate.set()
    await asyncio.gather(running, *queued)
    await batcher.stop()


async def test_a_cancelled_request_is_skipped_while_queued() -> None:
    forward = GatedForward()
    batcher = await started(forward, max_batch_size=8)
    running = await occupied(batcher, forward, rows(0))
    abandoned = asyncio.create_task(batcher.submit(rows(1)))
    kept = asyncio.create_task(batcher.submit(rows(2)))
    await until_queued(batcher, 2)
    abandoned.cancel()
    forward.gate.set()
    await running
    np.testing.assert_array_equal(await kept, rows(4))
    assert forward.batches == [1, 1]
    await batcher.stop()


async def test_stop_fails_what_is_queued_and_refuses_new_work() -> None:
    forward = GatedForward()
    batcher = await started(forward, max_batch_size=1)
    running = await occupied(batcher, forward, rows(0))
    queued = asyncio.create_task(batcher.submit(rows(1)))
    await until_queued(batcher, 1)
    forward.gate.set()
    await batcher.stop()
    with pytest.raises(ShuttingDown):
        await queued
    with pytest.raises(ShuttingDown):
        await batcher.submit(rows(2))
    await asyncio.gather(running, return_exceptions=True)
