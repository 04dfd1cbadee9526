"""The queue a version's instances share, which gives every lone batch to the first.

Why the first: few threads of the process may run passes on more than one torch thread,
or it holds more OpenMP workers than cores and every pass slows down; of a version's
instances only the first ever takes one of the permits (``registry.threads``). So the
first instance takes every batch it can, and the others take one only while it is busy
with one (gathering, computing, delivering it), on one thread each (``Batcher``'s
``share``). A lone request thus always runs on the first instance, with all the threads
while it holds a permit; under load the others gather and run passes beside it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Generic, TypeVar

T = TypeVar("T")


class FirstInstanceQueue(Generic[T]):
    """A FIFO like ``queue.SimpleQueue`` (``put``, ``get``, ``get_nowait``, ``qsize``),
    plus ``get_beside_first`` for the instances after the first.

    ``None`` is the stop sentinel: any instance takes it whenever it is oldest.
    """

    def __init__(self) -> None:
        self._items: deque[T | None] = deque()
        self._changed = threading.Condition()
        self._first_busy = False

    def put(self, item: T | None) -> None:
        with self._changed:
            self._items.append(item)
            # NOTE: all: the one woken by notify() could be an instance still barred
            self._changed.notify_all()

    def qsize(self) -> int:
        return len(self._items)

    def get(self, block: bool = True, timeout: float | None = None) -> T | None:
        """The oldest item, for the first instance, or for any gathering a batch."""
        return self._take(lambda: bool(self._items), block, timeout)

    def get_nowait(self) -> T | None:
        return self.get(block=False)

    def get_beside_first(self) -> T | None:
        """The oldest item once the first instance is busy (or a stop sentinel)."""

        def open_to_others() -> bool:
            return bool(self._items) and (self._first_busy or self._items[0] is None)

        return self._take(open_to_others, True, None)

    def first_busy(self, busy: bool) -> None:
        """Said by the first instance when it takes a batch and when it is done with it."""
        with self._changed:
            self._first_busy = busy
            if busy:
                self._changed.notify_all()

    def _take(self, ready: Callable[[], bool], block: bool, timeout: float | None) -> T | None:
        with self._changed:
            if not (self._changed.wait_for(ready, timeout) if block else ready()):
                raise Empty
            return self._items.popleft()
