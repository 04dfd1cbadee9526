"""``InlineGate`` alone: the evidence rules that the batcher tests reach only through
timing (``test_batching.py`` runs them end to end)."""

from __future__ import annotations

import asyncio

import pytest

from registry.inline import INLINE_EVIDENCE, INLINE_MAX_S, InlineGate

pytestmark = pytest.mark.anyio


def proven(gate: InlineGate, seconds: float = 1e-6) -> InlineGate:
    for _ in range(INLINE_EVIDENCE):
        gate.lone_pass(seconds)
    return gate


def test_only_a_full_streak_of_fast_one_row_passes_opens_the_gate() -> None:
    gate = InlineGate(fixed_limit_s=1e-3)
    for _ in range(INLINE_EVIDENCE - 1):
        gate.lone_pass(1e-6)
    assert not gate.allows(rows=1, handed=0)
    gate.lone_pass(1e-6)
    assert gate.allows(rows=1, handed=0)
    gate.lone_pass(2e-3)  # one slow pass starts the streak again
    assert not gate.allows(rows=1, handed=0)


def test_many_rows_or_work_with_the_threads_never_run_inline() -> None:
    gate = proven(InlineGate(fixed_limit_s=1e-3))
    assert not gate.allows(rows=2, handed=0)
    assert not gate.allows(rows=1, handed=1)


def test_a_zero_limit_never_opens() -> None:
    assert not proven(InlineGate(fixed_limit_s=0.0), seconds=0.0).allows(rows=1, handed=0)


def test_the_measured_limit_is_the_round_trip_less_the_pass_and_at_most_the_cap() -> None:
    gate = InlineGate()
    assert gate.limit_s() == 0.0  # no hand-off measured yet: nothing counts as fast
    for round_trip in (130e-6, 10.0, 150e-6):  # a stalled one among them
        gate.lone_pass(30e-6)
        gate.lone_round_trip(round_trip)
    assert gate.limit_s() == pytest.approx(120e-6)  # the median, passes left out
    for _ in range(3):
        gate.lone_round_trip(1.0)
    assert gate.limit_s() == INLINE_MAX_S


async def test_one_inline_pass_per_turn_of_the_loop() -> None:
    gate = proven(InlineGate(fixed_limit_s=1e-3))
    gate.entered(asyncio.get_running_loop())
    assert not gate.allows(rows=1, handed=0)  # a second request of the same turn is load
    await asyncio.sleep(0)
    assert gate.allows(rows=1, handed=0)
