"""``MemoryBudget``: the bytes charged on each device, against ``REGISTRY_MEMORY_BUDGET_BYTES``.

A load is charged before it starts (what the version measured last time, else the size of
its weight file), settled to what the loaded version measurably holds (its parameters and
buffers, as ``/models`` reports) once it is in, and refunded only when that memory has been
given back (``LoadedModel.release``). So the charge never falls below what is held, and a
load that would push it over the budget is refused before it reads a byte.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

import torch


class EvictionReason(StrEnum):
    """Why a version left memory while the manifest still names it."""

    MEMORY_BUDGET = "memory_budget"
    """Least recently used and idle while a load needed the room."""
    UNLOAD = "unload"
    """An operator's unload call."""


def device_key(device: torch.device) -> str:
    """The name a device is budgeted under: ``cpu``, ``cuda:0``... (``cuda`` is the current
    CUDA device, as torch places it)."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


class MemoryBudget:
    """Bytes charged per device; every device has the same ``limit`` (``None``: no limit).

    NOTE: written and read on the event loop only: a charge is decided there, before the
    loader thread starts.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        # NOTE: the CPU is always there: its series exist before anything is charged.
        self._charged: Counter[str] = Counter({"cpu": 0})

    def charged(self) -> dict[str, int]:
        """Bytes charged per device that has ever been charged."""
        return dict(self._charged)

    def free(self, device: str) -> int | None:
        """Bytes still free on ``device``; ``None`` with no limit."""
        if self.limit is None:
            return None
        return self.limit - self._charged[device]

    def fits(self, device: str, nbytes: int) -> bool:
        free = self.free(device)
        return free is None or nbytes <= free

    def charge(self, device: str, nbytes: int) -> None:
        self._charged[device] += nbytes

    def refund(self, device: str, nbytes: int) -> None:
        self._charged[device] -= nbytes
