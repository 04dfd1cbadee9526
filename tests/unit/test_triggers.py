"""The poller applies a manifest only once it has held still for two looks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from registry.errors import ManifestError
from registry.repository.triggers import ReloadTriggers
from registry.settings import Settings
from registry.tasks import Background

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ScriptedRepository:
    """Stands in for the repository: records reloads, fails those it is told to."""

    def __init__(self, failing: set[str]) -> None:
        self.reloads: list[str] = []
        self.failing = failing
        self.current = ""

    async def wait_loaded(self) -> list[object]:
        return []

    async def reload(self, *, actor: str) -> None:
        assert actor == "poll"
        self.reloads.append(self.current)
        if self.current in self.failing:
            raise ManifestError("refused")


async def poll_through(looks: list[str], failing: frozenset[str] = frozenset()) -> list[str]:
    """Run the poller over a scripted series of file states; the reloads it started."""
    repository = ScriptedRepository(set(failing))
    settings = Settings(manifest=Path("models.yaml"), poll_interval_s=0.001)
    background = Background()
    triggers = ReloadTriggers(repository, settings, background)  # type: ignore[arg-type]
    script: Iterator[str] = iter(looks)
    done = asyncio.Event()

    async def signature() -> tuple[str]:
        state = next(script, None)
        if state is None:
            done.set()
            state = looks[-1]
        repository.current = state
        return (state,)

    triggers._signature = signature  # type: ignore[method-assign,assignment]
    triggers.start()
    await asyncio.wait_for(done.wait(), timeout=30)
    triggers.stop()
    await background.close()
    return repository.reloads


async def test_a_file_still_changing_is_not_applied() -> None:
    # initial look, then a file caught mid-write twice, then the finished file
    reloads = await poll_through(["v0", "cut-1", "cut-2", "v1", "v1", "v1", "v1"])
    assert reloads == ["v1"]


async def test_every_settled_change_is_applied_once() -> None:
    reloads = await poll_through(["v0", "v0", "v1", "v1", "v1", "v2", "v2", "v2"])
    assert reloads == ["v1", "v2"]


async def test_a_refused_reload_is_tried_again_until_the_file_changes() -> None:
    reloads = await poll_through(["v0", "bad", "bad", "bad", "v1", "v1", "v1"], frozenset({"bad"}))
    assert reloads[:2] == ["bad", "bad"]
    assert reloads[-1] == "v1"
    assert reloads.count("v1") == 1


async def test_the_served_files_are_listed_on_the_event_loop(tmp_path: Path) -> None:
    """The registry's state is the loop's: a look from a worker thread could meet a set
    of versions being changed, fail, and end the poller for good."""
    (tmp_path / "models.yaml").write_text("models: []\n")
    (tmp_path / "a.pt").write_bytes(b"weights")
    listed_on: list[threading.Thread] = []

    class Registry:
        def status(self) -> SimpleNamespace:
            listed_on.append(threading.current_thread())
            served = [SimpleNamespace(spec=SimpleNamespace(path="a.pt"))]
            return SimpleNamespace(versions=lambda: served)

    repository = SimpleNamespace(registry=Registry())
    settings = Settings(manifest=tmp_path / "models.yaml", weights_dir=tmp_path)
    triggers = ReloadTriggers(repository, settings, Background())  # type: ignore[arg-type]
    manifest, weights = await triggers._signature()
    assert listed_on == [threading.current_thread()]
    assert manifest is not None
    assert weights is not None
