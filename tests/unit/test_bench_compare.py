"""``make bench-compare``'s parts that need no server: the base checked out beside this
one, and the table of medians and ratios with its slower-than-5 % mark."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import describe, run_git, summarize, table, worktree


def _runs(
    side: str, rps: list[float], cpu_us: list[float], non2xx: int = 0
) -> list[dict[str, object]]:
    return [
        {
            "side": side,
            "model": "tiny",
            "conc": 64,
            "rps": r,
            "cpu_us_per_request": c,
            "p99_ms": 9.0,
            "non2xx": non2xx,
            "errors": 0,
            "round": index,
        }
        for index, (r, c) in enumerate(zip(rps, cpu_us, strict=True))
    ]


def test_each_cell_compares_the_medians_of_the_rounds() -> None:
    runs = _runs("base", [1000, 5000, 1100], [100, 20, 90]) + _runs(
        "head", [990, 0, 1200], [95, 500, 80]
    )
    (row,) = summarize(runs)
    assert (row["base_rps"], row["head_rps"]) == (1100, 990)
    assert row["rps_ratio"] == pytest.approx(0.9)
    assert (row["base_cpu_us"], row["head_cpu_us"]) == (90, 95)
    assert row["cpu_ratio"] == pytest.approx(90 / 95)
    assert row["slower"]
    assert row["round_ratios"] == pytest.approx([0.99, 0.0, 1200 / 1100])
    assert "0.90x (0.00-1.09) **slower**, slower in 1 of 3 rounds" in table([row], "aaa", "bbb")


def test_each_round_compares_its_own_two_runs() -> None:
    """The machine's weather moves both runs of a round: their ratio is steady while the
    medians of each side would hide which rounds were slower."""
    runs = _runs("base", [1000, 2000, 4000], [100] * 3) + _runs(
        "head", [900, 1800, 3600], [100] * 3
    )
    (row,) = summarize(runs)
    assert row["round_ratios"] == pytest.approx([0.9, 0.9, 0.9])
    assert row["slower_rounds"] == 3
    assert "0.90x (0.90-0.90) **slower**, slower in 3 of 3 rounds" in table([row], "a", "b")


def test_a_round_that_ran_on_one_side_only_is_not_paired() -> None:
    runs = _runs("base", [1000, 1000], [100] * 2) + _runs("head", [1000], [100])
    (row,) = summarize(runs)
    assert row["round_ratios"] == pytest.approx([1.0])
    assert "1.00x |" in table([row], "a", "b")


def test_a_cell_within_five_percent_is_not_marked() -> None:
    (row,) = summarize(_runs("base", [1000], [100]) + _runs("head", [960], [100]))
    assert not row["slower"]
    assert "**slower**" not in table([row], "aaa", "bbb")
    assert "unanswered" not in table([row], "aaa", "bbb")


def test_a_cell_with_answers_that_are_not_2xx_says_so() -> None:
    (row,) = summarize(_runs("base", [1000], [100]) + _runs("head", [990, 980], [100] * 2, 3))
    assert row["failed"] == 6
    assert "(6 not 2xx or unanswered)" in table([row], "aaa", "bbb")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    root.mkdir()

    run_git("init", "-q", repository=root)
    identity = ("-c", "user.name=t", "-c", "user.email=t@example.org")
    for text in ("first", "second"):
        (root / "file.txt").write_text(text)
        run_git("add", "file.txt", repository=root)
        run_git(*identity, "commit", "-qm", text, repository=root)
    return root


def test_the_base_is_checked_out_beside_and_removed_afterwards(repository: Path) -> None:
    with worktree("HEAD~1", repository) as tree:
        assert (tree / "file.txt").read_text() == "first"
        assert (repository / "file.txt").read_text() == "second"
    assert not tree.exists()
    assert len(run_git("worktree", "list", repository=repository).splitlines()) == 1


def test_the_head_is_marked_when_the_working_tree_has_changes(repository: Path) -> None:
    clean = describe("HEAD", repository)
    assert not clean.endswith("+")
    (repository / "file.txt").write_text("changed")
    assert describe("HEAD", repository) == clean + "+"
    assert not describe("HEAD~1", repository).endswith("+")
