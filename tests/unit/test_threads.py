"""``use_threads``: a count set in one thread holds there, whatever another sets next."""

from __future__ import annotations

import threading

import torch

from registry.threads import use_threads


def test_a_count_set_holds_whatever_another_thread_sets_next() -> None:
    before = torch.get_num_threads()
    was_set, other_set = threading.Event(), threading.Event()
    seen: list[int] = []

    def setter() -> None:
        use_threads(3)
        was_set.set()
        other_set.wait(10)
        seen.append(torch.get_num_threads())

    def other() -> None:
        was_set.wait(10)
        torch.set_num_threads(1)
        other_set.set()

    try:
        threads = [threading.Thread(target=setter), threading.Thread(target=other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        torch.set_num_threads(before)  # NOTE: what threads started later take
    assert seen == [3]
