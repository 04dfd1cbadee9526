"""One timer for many deadlines: it fires for the late, spares the rest, and survives a
change of event loop."""

from __future__ import annotations

import asyncio

from registry.deadlines import Deadlines


async def _waited(deadlines: Deadlines, timeout_s: float, wait_s: float) -> str:
    task = deadlines.watch(deadlines.after(timeout_s))
    try:
        await asyncio.sleep(wait_s)
    except asyncio.CancelledError:
        return "timed out" if deadlines.timed_out(task) else "cancelled"
    finally:
        deadlines.unwatch(task)
    return "finished"


def test_only_the_late_are_cancelled() -> None:
    deadlines = Deadlines("test deadline")

    async def both() -> list[str]:
        return list(
            await asyncio.gather(
                _waited(deadlines, 0.05, 5.0),  # late
                _waited(deadlines, 5.0, 0.2),  # done well before its deadline
            )
        )

    assert asyncio.run(both()) == ["timed out", "finished"]


def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    deadlines = Deadlines("test deadline")

    async def cancelled() -> str:
        waiting = asyncio.create_task(_waited(deadlines, 5.0, 5.0))
        await asyncio.sleep(0)  # NOTE: the task watches its deadline and waits
        waiting.cancel()
        return await waiting

    assert asyncio.run(cancelled()) == "cancelled"


def test_deadlines_still_fire_on_the_next_event_loop() -> None:
    """A timer armed on a loop that then stopped never fires; the next loop arms its own."""
    deadlines = Deadlines("test deadline")
    assert asyncio.run(_waited(deadlines, 60.0, 0.0)) == "finished"  # arms a 60 s timer
    assert asyncio.run(_waited(deadlines, 0.05, 5.0)) == "timed out"


def test_a_shorter_deadline_after_a_longer_one_fires_first() -> None:
    """The timer is always for the earliest deadline, whichever was registered first."""
    deadlines = Deadlines("test deadline")
    ended: list[str] = []

    async def waited(timeout_s: float, wait_s: float) -> None:
        ended.append(await _waited(deadlines, timeout_s, wait_s))

    async def both() -> None:
        longer = asyncio.create_task(waited(5.0, 0.5))  # NOTE: arms the timer, for 5 s
        await asyncio.sleep(0)
        await asyncio.gather(longer, waited(0.05, 5.0))

    asyncio.run(both())
    assert ended == ["timed out", "finished"]
