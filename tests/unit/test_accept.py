"""``Accept`` picks the answer's form by q-value, as RFC 9110 describes."""

from __future__ import annotations

import pytest

from registry.serving import preferred_answer

JSON, RAW, NPY = "application/json", "application/octet-stream", "application/x-npy"


@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        (None, JSON),
        ("*/*", JSON),
        (NPY, NPY),
        (f"{JSON};q=0.1, {NPY}", NPY),
        (f"{NPY};q=0.5, {RAW};q=0.9", RAW),
        (f"{NPY} ; q=0.6, application/*;q=0.5", NPY),
        (f"application/*;q=0.5, {NPY};q=0.6", NPY),
        (f"{JSON};q=0, application/*", RAW),  # the exact range rules JSON out
        (f"{JSON};q=0", JSON),  # accepts nothing we make: JSON, not 406
        ("text/html,application/xhtml+xml,*/*;q=0.8", JSON),
        (f"{NPY};q=abc, {JSON};q=0.2", JSON),  # a malformed q counts as 0
        (f"{NPY.upper()};Q=1", NPY),
        ("text/plain", JSON),
    ],
)
def test_the_preferred_answer(accept: str | None, answer: str) -> None:
    assert preferred_answer(accept) == answer
