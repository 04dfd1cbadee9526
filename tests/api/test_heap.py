"""The heap is frozen once start-up loading is done and thawed at shutdown, unless
``freeze_heap`` is off (``registry.heap``: no full collection walks it while serving, and
the young generation is collected less often)."""

from __future__ import annotations

import gc
import logging

import pytest
from fastapi.testclient import TestClient

from registry.app import create_app
from registry.heap import YOUNG_THRESHOLD
from registry.settings import Settings
from tests.support import wait_for, wait_ready


@pytest.mark.parametrize("freeze", [True, False], ids=["freeze_heap", "no-freeze"])
def test_start_up_freezes_the_heap_and_shutdown_thaws_it_unless_turned_off(
    settings: Settings, freeze: bool, caplog: pytest.LogCaptureFixture
) -> None:
    assert gc.get_freeze_count() == 0
    before = gc.get_threshold()
    assert before[0] != YOUNG_THRESHOLD
    app = create_app(settings.model_copy(update={"freeze_heap": freeze}))
    with caplog.at_level(logging.INFO, "registry.lifespan"), TestClient(app) as client:
        wait_ready(client)
        # NOTE: the start-up supervisor says so once it has frozen (or not) the heap
        wait_for(lambda: "ready: every model loaded" in caplog.messages, "the supervisor")
        assert (gc.get_freeze_count() > 0) is freeze
        assert (gc.get_threshold()[0] == YOUNG_THRESHOLD) is freeze
        assert gc.get_threshold()[1:] == before[1:]
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
