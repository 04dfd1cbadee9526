"""Per-version dynamic batching on a dedicated inference thread.

A lone request runs at once; requests that arrive while a forward pass runs wait in a
bounded queue and the next pass takes as many as fit in ``max_batch_size`` rows. So there
is no added latency when idle and full batches under load, without a timer to tune.

One refinement keeps batches full under steady load: clients that just got their answers
send the next request a fraction of a millisecond later, so a pass that starts on the
first of them would run nearly alone and make the rest wait a whole pass. When the last
pass was a batch, the next one lingers for up to half a forward pass (never longer than
``LINGER_CAP_S``) until as many rows have arrived. After a lone request it never waits, so
light traffic sees no delay. An explicit ``max_delay_ms`` replaces this with a fixed wait.

The thread blocks on a ``SimpleQueue`` and hands each batch's results back to the event
loop with one ``call_soon_threadsafe``: two thread hand-offs per batch, none per row.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any

import numpy as np
import numpy.typing as npt

from registry.errors import ModelFailed, QueueFull, ShuttingDown
from registry.keys import VersionKey
from registry.manifest import BatchingSpec

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
Forward = Callable[[Array], Array]


@dataclass(slots=True)
class _Pending:
    inputs: Array  # batch axis first
    result: asyncio.Future[Array]


LINGER_CAP_S = 0.002


class Batcher:
    """One inference thread per model version, fed by the event loop.

    ``submit`` may be cancelled (a client timeout): the request is then skipped if still
    queued, or its share of the output discarded if already running.
    """

    def __init__(self, forward: Forward, config: BatchingSpec, *, key: VersionKey) -> None:
        self._forward = forward
        self._config = config
        self._key = key
        self._queue: SimpleQueue[_Pending | None] = SimpleQueue()  # None stops the thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_rows = 1  # inference-thread state: the size and cost of the last pass
        self._last_forward_s = 0.0

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the inference thread; results go back to the running loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"infer-{self._key}", daemon=True)
        self._thread.start()

    async def submit(self, inputs: Array) -> Array:
        """Queue a batch of instances and wait for their outputs (same batch length)."""
        if self._closed or self._loop is None:
            raise ShuttingDown(f"{self._key} is shutting down")
        if self._queue.qsize() >= self._config.max_queue:
            raise QueueFull(
                f"{self._key} has {self._queue.qsize()} requests queued",
                max_queue=self._config.max_queue,
            )
        result: asyncio.Future[Array] = self._loop.create_future()
        self._queue.put(_Pending(inputs, result))
        return await result

    async def stop(self) -> None:
        """Fail what is still queued, let a running pass deliver, then end the thread."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            await asyncio.sleep(0)  # NOTE: run the deliveries the thread scheduled last
        self._thread = self._loop = None

    def _work(self) -> None:
        carry: _Pending | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            if first is None:  # the stop sentinel
                return
            batch, carry, stop = self._gather(first)
            self._run(batch)
            if stop:
                return

    def _gather(self, first: _Pending) -> tuple[list[_Pending], _Pending | None, bool]:
        """``first`` plus what is queued and fits; returns the batch, a carry-over, stop."""
        batch, rows = [first], len(first.inputs)
        limit = self._config.max_batch_size
        if self._config.max_delay_ms:
            wanted, linger_s = limit, self._config.max_delay_ms / 1000
        else:
            wanted = min(limit, self._last_rows)
            linger_s = min(self._last_forward_s / 2, LINGER_CAP_S)
        deadline = time.monotonic() + linger_s
        while rows < limit:
            if rows >= wanted:
                deadline = 0.0  # enough rows: take only what is already queued
            try:
                wait = deadline - time.monotonic()
                queued = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except Empty:
                break
            if queued is None:  # the stop sentinel
                return batch, None, True
            if rows + len(queued.inputs) > limit:
                return batch, queued, False
            batch.append(queued)
            rows += len(queued.inputs)
        return batch, None, False

    def _run(self, batch: list[_Pending]) -> None:
        """On the inference thread: one forward pass for the batch, results to the loop."""
        live = [p for p in batch if not p.result.done()]  # NOTE: cancelled while queued
        outcome: list[Array] | BaseException
        if self._closed:
            outcome = ShuttingDown(f"{self._key} is shutting down")
        elif not live:
            return
        else:
            started = time.perf_counter()
            try:
                outcome = self._forward_all(live)
                self._last_forward_s = time.perf_counter() - started
                self._last_rows = sum(len(p.inputs) for p in live)
            except Exception:
                log.exception("inference failed", extra={"model": str(self._key)})
                outcome = ModelFailed("the model raised during inference", model=str(self._key))
        assert self._loop is not None  # noqa: S101 (set before the thread starts)
        self._loop.call_soon_threadsafe(_deliver, live or batch, outcome)

    def _forward_all(self, batch: list[_Pending]) -> list[Array]:
        if len(batch) == 1:
            return [self._forward(batch[0].inputs)]
        sizes = [len(p.inputs) for p in batch]
        outputs = self._forward(np.concatenate([p.inputs for p in batch]))
        if len(outputs) != sum(sizes):
            raise ValueError(f"output batch {len(outputs)} != input batch {sum(sizes)}")
        return np.split(outputs, np.cumsum(sizes)[:-1])


def _deliver(batch: list[_Pending], outcome: list[Array] | BaseException) -> None:
    """On the event loop: resolve each waiter that is still waiting."""
    if isinstance(outcome, BaseException):
        for pending in batch:
            if not pending.result.done():
                pending.result.set_exception(outcome)
        return
    for pending, output in zip(batch, outcome, strict=True):
        if not pending.result.done():  # the client may have given up
            pending.result.set_result(output)
