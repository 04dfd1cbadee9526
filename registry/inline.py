"""When a lone request may skip the inference thread and run its pass on the event loop.

Going to a version's inference thread and back costs a request two thread hand-offs
(``registry.batching``). For a tiny model they cost more than the forward pass itself,
so a lone one-row request skips them and runs its pass inline, on the event loop, when
all of:

- nothing is handed to the thread (queued, running, or with its answer on the way back),
  so passes keep their order and never overlap;
- no other request of this version ran inline in the same turn of the loop: requests
  that arrive together are load, and go to the thread to share a pass;
- the last ``INLINE_EVIDENCE`` one-row passes, timed on whichever side ran them, each
  took less than the hand-off the batcher measured (the time a lone request spends
  going to the thread and back beyond its pass), and never more than ``INLINE_MAX_S``.

Everything else takes the thread. A version starts without evidence (warm-up passes do
not reach the batcher), so its first one-row passes run on the thread and time it; one
slow pass, inline or not, sends the next ones back to the thread until
``INLINE_EVIDENCE`` fast ones in a row say otherwise. A model whose forward is slow thus
never blocks the loop: it never gathers the evidence.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import deque

INLINE_MAX_S = 250e-6
"""The longest one-row pass that may ever run on the event loop, whatever the hand-off.

NOTE: below this the limit is the hand-off itself, as measured in the serving process:
an inline pass then holds the loop for less time than sending it to the thread and back
would have cost the request. ``python -m bench.handoff`` puts the bare hand-off at about
50 µs on the 2-core VM the benchmarks run on, and inside a server, at one client, it
measures 45-60 µs; tiny's one-row pass takes 30 µs alone but 65-95 µs in a server, on
the loop as on the thread (its caches are cold after the HTTP work), so tiny stays on
the thread. The cap bounds how long any other request of the process can be held up. A
pass is timed by the wall clock, so a forward that sleeps or waits on a device counts as
slow, as it should."""

HANDOFF_SAMPLES = 16
"""Lone thread-path requests whose hand-off (round trip less the pass) is kept; the
median of them is the inline limit."""

INLINE_EVIDENCE = 4
"""How many one-row passes in a row must each be under the inline limit before one runs
inline.

NOTE: more than one, so that a model fast for some inputs only is caught on the thread;
few, because on a busy machine one pass in a few dozen is delayed (preempted, a page
fault) and each such pass costs this many hand-offs before inline passes resume."""


class InlineGate:
    """One version's evidence for running its lone one-row requests inline.

    The event loop asks ``allows`` and reports lone round trips through the thread; both
    sides report the one-row passes they ran.
    """

    def __init__(self, fixed_limit_s: float | None = None) -> None:
        """``fixed_limit_s``: None for the measured hand-off (at most ``INLINE_MAX_S``); a
        number fixes the limit (0: never inline; ``bench.handoff`` measures both ways,
        tests fix it to be exact)."""
        self._fixed_limit_s = fixed_limit_s
        self._handoffs: deque[float] = deque(maxlen=HANDOFF_SAMPLES)  # loop-side only
        self._handoff_s = 0.0  # their median: written by the loop, read by the threads
        self._last_lone_s = 0.0  # the last one-row pass: written before its delivery
        self._fast_streak = 0  # one-row passes in a row under the limit, either side
        self._this_turn = False

    def allows(self, rows: int, handed: int) -> bool:
        """On the loop: whether a request of ``rows`` may run inline while ``handed``
        requests are with the threads.

        One row only: the evidence is timed on one-row passes, and a pass costs more the
        more rows it has, so it says nothing of a request of sixteen. A client that sends
        many rows at once is after throughput, which the thread's batches serve.
        """
        return (
            handed == 0
            and rows == 1
            and self._fast_streak >= INLINE_EVIDENCE
            and not self._this_turn
        )

    def entered(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop, as an inline pass starts: no other runs inline this turn."""
        self._this_turn = True
        loop.call_soon(self._end_turn)  # NOTE: runs after the callbacks already ready

    def _end_turn(self) -> None:
        self._this_turn = False

    def lone_pass(self, seconds: float) -> None:
        """Extend or break the streak of fast one-row passes.

        NOTE: the loop and the threads write this. An inline pass runs only while the
        threads hold nothing; two instances may write it at once, and then one of their
        passes may go uncounted: evidence is a heuristic, and either outcome is safe.
        """
        self._last_lone_s = seconds
        fast = seconds < self.limit_s()
        self._fast_streak = min(self._fast_streak + 1, INLINE_EVIDENCE) if fast else 0

    def lone_round_trip(self, seconds: float) -> None:
        """On the loop, for a lone one-row request back from the thread: its round trip
        less its pass is what going to the thread cost, here and now."""
        self._handoffs.append(max(seconds - self._last_lone_s, 0.0))
        self._handoff_s = statistics.median(self._handoffs)

    def limit_s(self) -> float:
        """How long a one-row pass may take and still count as evidence for inline."""
        if self._fixed_limit_s is not None:
            return self._fixed_limit_s
        return min(self._handoff_s, INLINE_MAX_S)
