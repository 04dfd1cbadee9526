"""Fixtures for the API tests that look at which door served a request."""

from __future__ import annotations

from typing import Any

import fastapi.routing
import pytest


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The endpoints FastAPI's own dependency solver worked for."""
    seen: list[object] = []
    solve = fastapi.routing.solve_dependencies  # type: ignore[attr-defined]

    async def spy(**kwargs: Any) -> Any:
        seen.append(kwargs["dependant"].call)
        return await solve(**kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", spy)
    return seen
