"""``VersionKey``: the one way to name a loaded version, in tables, plans, logs and threads."""

from __future__ import annotations

from typing import NamedTuple


class VersionKey(NamedTuple):
    model: str
    version: str

    def __str__(self) -> str:
        return f"{self.model}:{self.version}"
