"""A model whose forward pass is slow and, when the test says so, does not finish.

Importable as ``tests.slow_model:Gated``, so a manifest served by a real server process
can name it. The test and the server share only a directory: each pass appends the name
of the thread it runs on and its row count to ``entered`` as it starts, and finishes only
once ``open`` exists there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch
from torch import nn

STEP_S = 0.002
"""Every pass takes at least this long: far above ``registry.inline.INLINE_MAX_S``, so the
model is slow on every pass, never fast on some (which could earn it an inline pass)."""


class Gated(nn.Module):
    """Echoes its input once ``directory/open`` exists; each pass logs to ``entered``."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = Path(directory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with (self.directory / "entered").open("a", encoding="utf-8") as log:
            log.write(f"{threading.current_thread().name} {len(x)}\n")
        time.sleep(STEP_S)
        while not (self.directory / "open").exists():
            time.sleep(STEP_S)
        return x * 1


def passes(directory: Path) -> list[tuple[str, int]]:
    """The passes started so far: the thread each ran on and its row count."""
    path = directory / "entered"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [(thread, int(rows)) for thread, rows in (line.rsplit(" ", 1) for line in lines)]
