from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from registry import batching, threads
from registry.batching import Array, Batcher, Share, concatenated
from registry.errors import InferenceTimeout, ModelFailed, QueueFull, ShuttingDown
from registry.inline import INLINE_EVIDENCE
from registry.keys import VersionKey
from registry.manifest import BatchingSpec
from registry.threads import WIDE_AFTER_S, WideThreads
from tests.factories import compute

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


async def started(forward: GatedForward, **config: int) -> Batcher[Array, Array]:
    batcher = Batcher(concatenated(forward), BatchingSpec(**config), key=VersionKey("m", "1"))
    batcher.start()
    return batcher


async def occupied(
    batcher: Batcher[Array, Array], forward: GatedForward, inputs: Array
) -> asyncio.Task[Array]:
    """Submit ``inputs`` and wait until their pass runs (held at the gate): what follows queues."""
    running = asyncio.create_task(batcher.submit(inputs))
    assert await asyncio.to_thread(forward.entered.wait, 10)
    return running


async def until_queued(batcher: Batcher[Array, Array], depth: int) -> None:
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


async def test_a_failed_pass_fails_only_the_request_that_fails_alone() -> None:
    forward = GatedForward(fail_on=-1)
    batcher = await started(forward, max_batch_size=8)
    blocker = await occupied(batcher, forward, rows(0))
    doomed = asyncio.create_task(batcher.submit(rows(-1)))
    spared = asyncio.create_task(batcher.submit(rows(5)))
    await until_queued(batcher, 2)
    forward.gate.set()
    await blocker
    with pytest.raises(ModelFailed, match="raised during inference"):
        await doomed
    np.testing.assert_array_equal(await spared, rows(10))
    assert forward.batches == [1, 2, 1, 1]  # NOTE: the shared pass, then each alone
    np.testing.assert_array_equal(await batcher.submit(rows(7)), rows(14))
    await batcher.stop()


async def test_a_model_that_fails_every_request_alone_is_not_split_again() -> None:
    forward = GatedForward(fail_on=-1)
    batcher = await started(forward, max_batch_size=8)
    for _ in range(2):
        blocker = await occupied(batcher, forward, rows(-1))
        queued = [asyncio.create_task(batcher.submit(rows(-1))) for _ in range(2)]
        await until_queued(batcher, 2)
        forward.gate.set()
        answers = await asyncio.gather(blocker, *queued, return_exceptions=True)
        assert all(isinstance(answer, ModelFailed) for answer in answers), answers
        forward.entered.clear()
        forward.gate.clear()
    assert forward.batches == [1, 2, 1, 1, 1, 2]  # NOTE: split once, then failed whole
    forward.gate.set()
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


async def test_a_request_past_its_deadline_times_out_and_is_skipped() -> None:
    forward = GatedForward()
    batcher = await started(forward, max_batch_size=8)
    running = await occupied(batcher, forward, rows(0))
    with pytest.raises(InferenceTimeout) as caught:
        await batcher.submit(rows(1), timeout_s=0.05)
    assert "within 0.05 s" in str(caught.value)
    kept = asyncio.create_task(batcher.submit(rows(2), timeout_s=30))
    await until_queued(batcher, 2)  # NOTE: the timed-out one is still queued, then skipped
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


class Recording:
    """Doubles its input, recording the thread of each pass; ``delay_s`` makes it slow,
    ``gate`` (when cleared) holds it, and a row equal to ``fail_on`` makes it raise."""

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None) -> None:
        self.threads: list[int] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, inputs: Array) -> Array:
        self.threads.append(threading.get_ident())
        self.entered.set()
        self.gate.wait(timeout=10)
        time.sleep(self.delay_s)
        if self.fail_on is not None and (inputs == self.fail_on).any():
            raise RuntimeError("boom")
        return inputs * 2

    def on_loop(self) -> list[bool]:
        """For each pass so far: whether it ran on this (the event loop's) thread."""
        here = threading.get_ident()
        return [thread == here for thread in self.threads]


# NOTE: a bound no trivial pass exceeds and no delayed one meets, so no test hangs on timing
GENEROUS_S = 0.25


def inline_batcher(
    forward: Recording, inline_max_s: float = GENEROUS_S, **config: int
) -> Batcher[Array, Array]:
    batcher = Batcher(
        concatenated(forward),
        BatchingSpec(**config),
        key=VersionKey("m", "1"),
        inline_max_s=inline_max_s,
    )
    batcher.start()
    return batcher


async def one_by_one(batcher: Batcher[Array, Array], count: int, value: float = 1) -> None:
    """Lone one-row requests, each in a later turn of the loop, as a client's would be."""
    for _ in range(count):
        np.testing.assert_array_equal(await batcher.submit(rows(value)), rows(2 * value))
        await asyncio.sleep(0)


async def test_a_fast_forward_runs_inline_once_its_history_says_fast() -> None:
    forward = Recording()
    batcher = inline_batcher(forward)
    await one_by_one(batcher, INLINE_EVIDENCE + 3)
    assert forward.on_loop() == [False] * INLINE_EVIDENCE + [True] * 3
    await batcher.stop()


async def test_warm_up_is_no_evidence_and_many_rows_never_run_inline() -> None:
    forward = Recording()
    forward(rows(0, 0))  # NOTE: what loaders.py's warm-up does, beside the batcher
    batcher = inline_batcher(forward)
    await one_by_one(batcher, INLINE_EVIDENCE)
    np.testing.assert_array_equal(await batcher.submit(rows(1, 2)), rows(2, 4))
    np.testing.assert_array_equal(await batcher.submit(rows(3)), rows(6))
    assert forward.on_loop() == [True] + [False] * INLINE_EVIDENCE + [False, True]
    await batcher.stop()


async def test_while_a_pass_runs_or_waits_a_lone_row_queues_behind_it() -> None:
    forward = Recording()
    batcher = inline_batcher(forward, max_batch_size=8)
    await one_by_one(batcher, INLINE_EVIDENCE)
    forward.gate.clear()
    forward.entered.clear()
    running = asyncio.create_task(batcher.submit(rows(1, 1)))  # two rows: the thread
    assert await asyncio.to_thread(forward.entered.wait, 10)
    queued = asyncio.create_task(batcher.submit(rows(2, 2)))
    lone = asyncio.create_task(batcher.submit(rows(3)))
    await until_queued(batcher, 2)
    forward.gate.set()
    results = await asyncio.gather(running, queued, lone)
    np.testing.assert_array_equal(results[2], rows(6))
    assert forward.on_loop()[INLINE_EVIDENCE:] == [False, False]  # the queued two share a pass
    await one_by_one(batcher, 1)
    assert forward.on_loop()[-1]  # idle again: inline
    await batcher.stop()


async def test_of_requests_arriving_together_only_the_first_runs_inline() -> None:
    forward = Recording()
    batcher = inline_batcher(forward, max_batch_size=8)
    await one_by_one(batcher, INLINE_EVIDENCE)
    results = await asyncio.gather(*(batcher.submit(rows(v)) for v in (1, 2, 3)))
    assert [r[0, 0] for r in results] == [2, 4, 6]
    first, *rest = forward.on_loop()[INLINE_EVIDENCE:]
    assert first
    assert rest
    assert not any(rest)
    await batcher.stop()


async def test_a_slow_forward_never_runs_on_the_loop() -> None:
    forward = Recording(delay_s=0.001)  # NOTE: four times INLINE_MAX_S, at the least
    batcher = Batcher(concatenated(forward), BatchingSpec(), key=VersionKey("m", "1"))
    batcher.start()
    await one_by_one(batcher, 3 * INLINE_EVIDENCE)
    assert not any(forward.on_loop())
    await batcher.stop()


async def test_by_default_a_pass_shorter_than_the_measured_hand_off_goes_inline() -> None:
    threads: list[int] = []

    def instant(inputs: Array) -> Array:  # NOTE: a microsecond, against tens for a hand-off
        threads.append(threading.get_ident())
        return inputs * 2

    batcher = Batcher(concatenated(instant), BatchingSpec(), key=VersionKey("m", "1"))
    batcher.start()
    for _ in range(INLINE_EVIDENCE + 60):
        np.testing.assert_array_equal(await batcher.submit(rows(1)), rows(2))
        await asyncio.sleep(0)
    on_loop = [thread == threading.get_ident() for thread in threads]
    # NOTE: the first pass has no hand-off to compare with yet; then evidence is gathered
    assert on_loop[: INLINE_EVIDENCE + 1] == [False] * (INLINE_EVIDENCE + 1)
    assert any(on_loop)
    await batcher.stop()


async def test_one_slow_inline_pass_sends_the_next_ones_to_the_thread() -> None:
    forward = Recording()
    batcher = inline_batcher(forward)
    await one_by_one(batcher, INLINE_EVIDENCE + 1)
    forward.delay_s = 2 * GENEROUS_S
    await one_by_one(batcher, 1)  # inline, and slow
    forward.delay_s = 0.0
    await one_by_one(batcher, INLINE_EVIDENCE + 1)
    expected = [False] * INLINE_EVIDENCE + [True, True] + [False] * INLINE_EVIDENCE + [True]
    assert forward.on_loop() == expected
    await batcher.stop()


async def test_an_inline_failure_is_the_threads_failure(caplog: pytest.LogCaptureFixture) -> None:
    forward = Recording(fail_on=-1)
    batcher = inline_batcher(forward)
    await one_by_one(batcher, INLINE_EVIDENCE)
    with pytest.raises(ModelFailed, match="raised during inference") as caught:
        await batcher.submit(rows(-1))
    assert caught.value.details == {"model": "m:1"}
    assert forward.on_loop()[-1]
    (record,) = [r for r in caplog.records if r.getMessage() == "inference failed"]
    assert record.exc_info is not None
    assert getattr(record, "model", None) == "m:1"
    await asyncio.sleep(0)
    await one_by_one(batcher, 1)  # a fast failure is still fast: inline again
    assert forward.on_loop()[-1]
    await batcher.stop()


async def test_a_batch_cancelled_while_queued_still_frees_the_thread_for_inline() -> None:
    forward = Recording()
    batcher = inline_batcher(forward, max_batch_size=2)
    await one_by_one(batcher, INLINE_EVIDENCE)
    forward.gate.clear()
    forward.entered.clear()
    running = asyncio.create_task(batcher.submit(rows(1, 1)))
    assert await asyncio.to_thread(forward.entered.wait, 10)
    abandoned = asyncio.create_task(batcher.submit(rows(2)))
    after = asyncio.create_task(batcher.submit(rows(3, 3)))  # NOTE: too big to share its batch
    await until_queued(batcher, 2)
    abandoned.cancel()
    forward.gate.set()
    await asyncio.gather(running, after)  # the skipped batch reported back before ``after``
    await one_by_one(batcher, 1)
    assert forward.on_loop()[INLINE_EVIDENCE:] == [False, False, True]
    await batcher.stop()


async def test_after_stop_even_an_inline_request_is_refused() -> None:
    forward = Recording()
    batcher = inline_batcher(forward)
    await one_by_one(batcher, INLINE_EVIDENCE + 1)
    await batcher.stop()
    with pytest.raises(ShuttingDown):
        await batcher.submit(rows(1))
    assert len(forward.threads) == INLINE_EVIDENCE + 1


class Concurrent:
    """Doubles its input; each pass waits at a barrier of ``parties``, so a pass returns
    only once that many run at the same moment."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.entered = threading.Semaphore(0)  # released as each pass starts
        self.threads: set[str] = set()

    def __call__(self, inputs: Array) -> Array:
        self.threads.add(threading.current_thread().name)
        self.entered.release()
        self.barrier.wait()
        return inputs * 2


def instances_batcher(
    forward: Callable[[Array], Array],
    instances: int,
    share: Share | None = None,
    wide: WideThreads | None = None,
    name: str = "m",
    spec: BatchingSpec | None = None,
) -> Batcher[Array, Array]:
    """Never inline, so every pass runs on an instance's thread, and the first instance's
    passes may run on several threads from the first, however short."""
    return Batcher(
        concatenated(forward),
        spec or BatchingSpec(),
        key=VersionKey(name, "1"),
        inline_max_s=0.0,
        wide_after_s=0.0,
        instances=instances,
        share=share,
        wide=wide,
    )


async def test_instances_run_passes_at_once_and_share_the_cores_between_them() -> None:
    forward = Concurrent(parties=2)
    shares: list[tuple[int, bool]] = []
    batcher = instances_batcher(forward, 2, lambda passes, first: shares.append((passes, first)))
    batcher.start()
    try:
        # NOTE: the first pass holds its instance at the barrier until the second runs
        first = asyncio.create_task(batcher.submit(rows(1)))
        assert await asyncio.to_thread(forward.entered.acquire, timeout=10)
        second = await batcher.submit(rows(2, 3))
        np.testing.assert_array_equal(await first, rows(2))
        np.testing.assert_array_equal(second, rows(4, 6))
    finally:
        await batcher.stop()
    assert forward.threads == {"infer-m:1-0", "infer-m:1-1"}
    assert sorted(shares[:2]) == [(1, False), (1, True)]  # each thread's start
    # the lone pass on the first instance, then the second beside it on the other
    assert shares[2:] == [(1, True), (2, False)]
    assert not [t for t in threading.enumerate() if t.name.startswith("infer-m:1")]


async def test_one_instance_leaves_a_thread_to_the_loop_while_work_waits() -> None:
    """Work waiting is requests the event loop reads and answers meanwhile: a wide pass
    then takes one thread fewer, as beside another instance's pass."""
    entered, release = threading.Semaphore(0), threading.Event()

    def forward(inputs: Array) -> Array:
        entered.release()
        release.wait(timeout=10)
        return inputs * 2

    shares: list[tuple[int, bool]] = []
    batcher: Batcher[Array, Array] = Batcher(
        concatenated(forward),
        BatchingSpec(max_batch_size=1),
        key=VersionKey("m", "1"),
        inline_max_s=0.0,
        wide_after_s=0.0,
        share=lambda *share: shares.append(share),
    )
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(rows(1)))
        assert await asyncio.to_thread(entered.acquire, timeout=10)
        waiting = [asyncio.create_task(batcher.submit(rows(i))) for i in (2, 3)]
        await asyncio.sleep(0)  # NOTE: each task queues its request before it first waits
        assert batcher.queue_depth == 2
        release.set()
        answers = await asyncio.gather(first, *waiting)
    finally:
        await batcher.stop()
    for answer, i in zip(answers, (1, 2, 3), strict=True):
        np.testing.assert_array_equal(answer, rows(2 * i))
    # its start (nothing waits), the pass with one request behind it, the last alone
    assert shares == [(1, True), (2, True), (1, True)]


async def test_with_several_instances_a_lone_request_always_runs_on_the_first() -> None:
    names: list[str] = []

    def forward(inputs: Array) -> Array:
        names.append(threading.current_thread().name)
        return inputs * 2

    await doubles_lone_requests(instances_batcher(forward, 3), 20)
    assert set(names) == {"infer-m:1-0"}  # the others never took a batch
    assert not [t for t in threading.enumerate() if t.name.startswith("infer-m:1")]


async def test_with_several_instances_a_pass_takes_its_share_of_max_batch_size() -> None:
    """Six requests wait while both instances compute: at most 4 / 2 rows a pass, not
    one instance's pass of 4 and the other's of 2 (or of 1 each, under steady load)."""
    entered, release = threading.Semaphore(0), threading.Event()
    sizes: list[int] = []

    def forward(inputs: Array) -> Array:
        sizes.append(len(inputs))
        if len(sizes) <= 2:  # NOTE: the two first passes hold their instances
            entered.release()
            release.wait(timeout=10)
        return inputs * 2

    batcher = instances_batcher(forward, 2, spec=BatchingSpec(max_batch_size=4))
    batcher.start()
    try:
        busy = []
        for i in (0, 1):  # NOTE: one at a time, or the first instance takes both
            busy.append(asyncio.create_task(batcher.submit(rows(i))))
            assert await asyncio.to_thread(entered.acquire, timeout=10)
        waiting = [asyncio.create_task(batcher.submit(rows(i))) for i in range(2, 8)]
        await asyncio.sleep(0)  # NOTE: each task queues its request before it first waits
        assert batcher.queue_depth == 6
        release.set()
        answers = await asyncio.gather(*busy, *waiting)
    finally:
        await batcher.stop()
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, rows(2 * i))
    assert sizes[:2] == [1, 1]
    assert sorted(sizes[2:]) == [2, 2, 2]


async def doubles_lone_requests(batcher: Batcher[Array, Array], count: int) -> None:
    """Start ``batcher``, send ``count`` lone requests to a doubling model, stop it."""
    batcher.start()
    try:
        for i in range(count):
            np.testing.assert_array_equal(await batcher.submit(rows(i)), rows(2 * i))
    finally:
        await batcher.stop()


def test_instances_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(concatenated(lambda x: x), BatchingSpec(), key=VersionKey("m", "1"), instances=0)


class SaysWhenGivenBack(WideThreads):
    """Permits that say when one comes back: a holder's successor saw it end."""

    def __init__(self) -> None:
        super().__init__(2, cores=2)  # NOTE: one permit
        self.given_back = threading.Event()

    def give_back(self) -> None:
        super().give_back()
        self.given_back.set()


async def test_a_first_instance_refused_a_permit_runs_on_one_thread() -> None:
    permits = WideThreads(2, cores=2)
    assert permits.try_take()  # NOTE: another version's thread holds the only one
    shares: list[tuple[int, bool]] = []
    batcher = instances_batcher(lambda x: x * 2, 1, lambda *share: shares.append(share), permits)
    await doubles_lone_requests(batcher, 3)
    assert shares == [(1, False)]  # its start, and never more than one thread
    assert permits.wanted


async def test_a_permit_goes_to_a_first_instance_and_on_once_its_holder_idles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batching, "HAND_ON_AFTER_S", 0.05)
    permits = SaysWhenGivenBack()
    shares: dict[str, list[tuple[int, bool]]] = {"a": [], "b": []}
    a, b = (
        instances_batcher(lambda x: x * 2, 1, lambda *s, n=n: shares[n].append(s), permits, n)
        for n in ("a", "b")
    )
    a.start()
    b.start()
    try:
        np.testing.assert_array_equal(await a.submit(rows(1)), rows(2))
        (holder,) = [t for t in threading.enumerate() if t.name == "infer-a:1"]
        np.testing.assert_array_equal(await b.submit(rows(2)), rows(4))
        assert shares == {"a": [(1, False), (1, True)], "b": [(1, False)]}
        # a idles while b wants the permit: a's thread ends, and its successor gives it back
        assert await asyncio.to_thread(permits.given_back.wait, 10)
        assert not holder.is_alive()
        np.testing.assert_array_equal(await b.submit(rows(3)), rows(6))
        assert shares["b"] == [(1, False), (1, True)]
        np.testing.assert_array_equal(await a.submit(rows(4)), rows(8))
        assert shares["a"] == [(1, False), (1, True), (1, False)]  # the successor: refused
    finally:
        await a.stop()
        await b.stop()
    assert not [t for t in threading.enumerate() if t.name in ("infer-a:1", "infer-b:1")]


async def test_a_holder_whose_passes_turn_short_hands_its_permit_on_while_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under steady load its thread never idles: it hands on at the pass that shows its
    passes no longer gain from several threads."""
    monkeypatch.setattr(batching, "HAND_ON_AFTER_S", 3600.0)  # NOTE: never by idling here
    monkeypatch.setattr(threads, "WIDE_EVIDENCE", 2)
    monkeypatch.setattr(threads, "WIDE_RECHECK", 2)
    permits = SaysWhenGivenBack()
    computes = {"a": 2 * WIDE_AFTER_S}
    shares: dict[str, list[tuple[int, bool]]] = {"a": [], "b": []}

    def forward_a(x: Array) -> Array:
        compute(computes["a"])
        return x * 2

    a = Batcher(
        concatenated(forward_a),
        BatchingSpec(),
        key=VersionKey("a", "1"),
        inline_max_s=0.0,
        share=lambda *s: shares["a"].append(s),
        wide=permits,
    )
    b = instances_batcher(lambda x: x * 2, 1, lambda *s: shares["b"].append(s), permits, "b")
    a.start()
    b.start()
    try:
        for i in range(3):  # NOTE: two long passes on one thread, then one on several
            np.testing.assert_array_equal(await a.submit(rows(i)), rows(2 * i))
        assert shares["a"] == [(1, False), (1, True)]
        np.testing.assert_array_equal(await b.submit(rows(1)), rows(2))
        assert shares["b"] == [(1, False)]  # NOTE: refused: a holds the only one
        computes["a"] = 0.0
        for i in range(3):  # NOTE: one more on several, then a check on one: it is short
            np.testing.assert_array_equal(await a.submit(rows(i)), rows(2 * i))
        assert await asyncio.to_thread(permits.given_back.wait, 10)
        np.testing.assert_array_equal(await b.submit(rows(3)), rows(6))
        assert shares["b"] == [(1, False), (1, True)]
    finally:
        await a.stop()
        await b.stop()


async def test_a_version_stopped_as_its_thread_hands_on_joins_the_successor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``stop`` may list the threads between a hand-on's listing its successor and
    starting it: it must find the successor started, or ``join`` raises."""
    monkeypatch.setattr(batching, "HAND_ON_AFTER_S", 0.05)
    permits = SaysWhenGivenBack()
    batcher = instances_batcher(lambda x: x * 2, 1, wide=permits)
    batcher.start()
    listed = threading.Event()
    stopping = threading.Event()

    class StartsLate(threading.Thread):
        """A successor whose start is delayed until ``stop`` is under way."""

        def start(self) -> None:
            if self.name.startswith("infer-"):  # NOTE: not the executor's threads
                listed.set()
                stopping.wait(10)
            super().start()

    np.testing.assert_array_equal(await batcher.submit(rows(1)), rows(2))
    assert not permits.try_take()  # NOTE: another version wants the permit: a hands on
    monkeypatch.setattr(threading, "Thread", StartsLate)
    assert await asyncio.to_thread(listed.wait, 10)
    monkeypatch.setattr(threading, "Thread", threading.Thread)
    # NOTE: from another thread: with the fix, ``stop`` waits on the loop for the start
    threading.Timer(0.1, stopping.set).start()
    await batcher.stop()
    assert await asyncio.to_thread(permits.given_back.wait, 10)
    assert not [t for t in threading.enumerate() if t.name.startswith("infer-m:1")]


async def test_a_version_stopped_gives_its_permit_back_once_its_thread_has_ended() -> None:
    permits = WideThreads(2, cores=2)
    batcher = instances_batcher(lambda x: x * 2, 2, wide=permits)
    batcher.start()
    try:
        np.testing.assert_array_equal(await batcher.submit(rows(1)), rows(2))
        assert not permits.try_take()  # NOTE: the first instance holds the only one
    finally:
        await batcher.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("infer-m:1")]
    assert permits.try_take()  # a reload that retires a version leaves it to the next


async def test_model_code_that_calls_sys_exit_fails_its_request_and_the_thread_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``threading`` drops ``SystemExit`` without a word: caught as any failure, or the
    thread would end and every later request wait until it timed out."""

    def forward(batch: Array) -> Array:
        if (batch == -1).any():
            sys.exit(3)
        return batch * 2

    batcher = Batcher(concatenated(forward), BatchingSpec(), key=VersionKey("m", "1"))
    batcher.start()
    with pytest.raises(ModelFailed, match="raised during inference"):
        await batcher.submit(rows(-1), timeout_s=30)
    np.testing.assert_array_equal(await batcher.submit(rows(1), timeout_s=30), rows(2))
    assert [r.getMessage() for r in caplog.records].count("inference failed") == 1
    await batcher.stop()
