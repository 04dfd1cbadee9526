"""Per-version dynamic batching.

A lone request runs at once; requests that arrive while a forward pass runs wait in a
bounded queue and the next pass takes as many as fit in ``max_batch_size`` rows. So there
is no added latency when idle and full batches under load, without a timer to tune.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from registry.errors import ModelFailed, QueueFull, ShuttingDown
from registry.manifest import BatchingSpec

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
Forward = Callable[[Array], Array]


@dataclass(slots=True)
class _Pending:
    inputs: Array  # batch axis first
    result: asyncio.Future[Array]


class Batcher:
    """One consumer task per model version; the forward pass runs on its own thread.

    ``submit`` may be cancelled (a client timeout): the request is then skipped if still
    queued, or its share of the output discarded if already running.
    """

    def __init__(self, forward: Forward, config: BatchingSpec, *, key: str) -> None:
        self._forward = forward
        self._config = config
        self._key = key
        self._pending: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Create the queue's event, the consumer task and the thread; needs a running loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{self._key}")
        self._task = asyncio.get_running_loop().create_task(
            self._consume(self._wakeup, self._executor), name=f"batcher-{self._key}"
        )

    async def submit(self, inputs: Array) -> Array:
        """Queue a batch of instances and wait for their outputs (same batch length)."""
        if self._closed or self._wakeup is None:
            raise ShuttingDown(f"{self._key} is shutting down")
        if len(self._pending) >= self._config.max_queue:
            raise QueueFull(
                f"{self._key} has {len(self._pending)} requests queued",
                max_queue=self._config.max_queue,
            )
        result: asyncio.Future[Array] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(inputs, result))
        self._wakeup.set()
        return await result

    async def stop(self) -> None:
        """Fail what is still queued, let a running pass deliver, then end the consumer."""
        self._closed = True
        while self._pending:
            pending = self._pending.popleft()
            if not pending.result.done():
                pending.result.set_exception(ShuttingDown(f"{self._key} is shutting down"))
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._task = self._executor = self._wakeup = None

    async def _consume(self, wakeup: asyncio.Event, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wakeup.wait()
            if self._closed:
                return
            batch = self._take()
            if self._config.max_delay_ms and self._rows(batch) < self._config.max_batch_size:
                await asyncio.sleep(self._config.max_delay_ms / 1000)
                batch += self._take(self._rows(batch))
            if not self._pending:
                wakeup.clear()
            if not batch:
                continue
            try:
                outputs = await loop.run_in_executor(executor, self._run, batch)
            except Exception:
                log.exception("inference failed", extra={"model": self._key})
                error = ModelFailed("the model raised during inference", model=self._key)
                for pending in batch:
                    if not pending.result.done():
                        pending.result.set_exception(error)
                continue
            for pending, output in zip(batch, outputs, strict=True):
                if not pending.result.done():  # the client may have given up
                    pending.result.set_result(output)

    def _take(self, rows: int = 0) -> list[_Pending]:
        """Pop queued requests while they fit; always at least one when nothing is taken yet."""
        taken: list[_Pending] = []
        while self._pending:
            head = self._pending[0]
            if head.result.done():  # cancelled while queued
                self._pending.popleft()
                continue
            size = len(head.inputs)
            if (rows or taken) and rows + size > self._config.max_batch_size:
                break
            taken.append(self._pending.popleft())
            rows += size
        return taken

    @staticmethod
    def _rows(batch: list[_Pending]) -> int:
        return sum(len(p.inputs) for p in batch)

    def _run(self, batch: list[_Pending]) -> list[Array]:
        """On the worker thread: one forward pass for the whole batch, split per request."""
        if len(batch) == 1:
            return [self._forward(batch[0].inputs)]
        sizes = [len(p.inputs) for p in batch]
        outputs = self._forward(np.concatenate([p.inputs for p in batch]))
        if len(outputs) != sum(sizes):
            raise ValueError(f"output batch {len(outputs)} != input batch {sum(sizes)}")
        return np.split(outputs, np.cumsum(sizes)[:-1])
