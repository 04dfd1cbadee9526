"""Rounds of side-by-side cells: two servers measured back to back, in turns.

On a shared machine the speed drifts by tens of percent within minutes, so a comparison
of two servers runs each cell on one and at once on the other, the order swapped every
round so that drift favours neither (``bench.compare``: two checkouts; ``bench.minilm``:
this project and LitServe). Each round's two runs share the machine's weather, so the
rounds' own ratios say how far the noise reaches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def in_turns(sides: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    """(round, side): every side once a round, back to back, in reverse order every
    other round."""
    for round_ in range(rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            yield round_, side


def paired_ratios(
    base: Sequence[Mapping[str, Any]], head: Sequence[Mapping[str, Any]]
) -> list[float]:
    """Head ÷ base req/s of each round, whose two runs were back to back.

    NOTE: a round's two runs share the machine's weather, so the spread of these says
    whether a difference of medians stands out of the noise: a cell slower in every round
    is slower; one slower in some is not shown to be.
    """
    bases = {run["round"]: float(run["rps"]) for run in base}
    return [
        float(run["rps"]) / max(bases[run["round"]], 1e-9) for run in head if run["round"] in bases
    ]
