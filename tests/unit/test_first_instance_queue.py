"""``FirstInstanceQueue``: the first instance takes any item; the others only while it
computes, or a stop sentinel whenever one is oldest."""

from __future__ import annotations

import threading
from queue import Empty

import pytest

from registry.instances import FirstInstanceQueue


def test_it_is_first_in_first_out_and_get_may_time_out() -> None:
    queue: FirstInstanceQueue[int] = FirstInstanceQueue()
    for item in (1, 2, 3):
        queue.put(item)
    assert queue.qsize() == 3
    assert [queue.get(), queue.get_nowait(), queue.get(timeout=0.01)] == [1, 2, 3]
    with pytest.raises(Empty):
        queue.get_nowait()
    with pytest.raises(Empty):
        queue.get(timeout=0.01)


def other_instance(queue: FirstInstanceQueue[int]) -> tuple[threading.Thread, list[int | None]]:
    """A thread that takes one item as an instance after the first; what it took."""
    taken: list[int | None] = []
    other = threading.Thread(target=lambda: taken.append(queue.get_beside_first()))
    other.start()
    return other, taken


def test_the_others_wait_until_the_first_is_busy() -> None:
    queue: FirstInstanceQueue[int] = FirstInstanceQueue()
    other, taken = other_instance(queue)
    queue.put(7)
    other.join(timeout=0.2)
    assert other.is_alive()  # the first is idle: the item is its
    assert not taken
    queue.first_busy(True)
    other.join(timeout=10)
    assert taken == [7]
    queue.first_busy(False)


def test_a_waiting_other_instance_leaves_an_item_to_the_idle_first() -> None:
    queue: FirstInstanceQueue[int] = FirstInstanceQueue()
    other, taken = other_instance(queue)
    queue.put(1)
    assert queue.get(timeout=10) == 1
    queue.put(None)  # NOTE: the stop sentinel ends the waiting instance
    other.join(timeout=10)
    assert taken == [None]


def test_a_stop_sentinel_reaches_the_others_while_the_first_is_idle() -> None:
    queue: FirstInstanceQueue[int] = FirstInstanceQueue()
    queue.put(None)
    other, taken = other_instance(queue)
    other.join(timeout=10)
    assert taken == [None]
