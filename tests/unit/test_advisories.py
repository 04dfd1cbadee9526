"""The advisory table in ``docs/security.md`` holds for what is installed and what is required.

No vulnerability database is reachable from the machines this runs on, so the table is the
database: these tests parse it (it cannot drift from them), compare it with the installed
distributions and with ``pyproject.toml``'s lower bounds, and check that every row cites its
advisory.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "security.md"
HEADER = ("package", "advisory", "what it is", "first fixed")
GHSA = r"GHSA(?:-[23456789cfghjmpqrvwx]{4}){3}"
ADVISORY = re.compile(
    rf"^\[(?P<ghsa>{GHSA})\]\(https://github\.com/advisories/(?P<link>{GHSA})\), "
    r"(?P<cve>CVE-\d{4}-\d{4,})$"
)
# NOTE: a cell may hold an escaped pipe (`\|attr`), which is not a column separator.
CELL_SEPARATOR = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Row:
    line: int
    width: int
    package: str
    advisory: str
    what: str
    fixed: str

    @property
    def ghsa(self) -> str:
        match = ADVISORY.match(self.advisory)
        return match["ghsa"] if match else self.advisory

    def __str__(self) -> str:
        return f"{self.package} {self.ghsa} (docs/security.md:{self.line})"


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in CELL_SEPARATOR.split(line.strip().strip("|"))]


def tables(text: str) -> list[list[Row]]:
    """Every table in the document whose header is exactly ``HEADER``."""
    found: list[list[Row]] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("|") or tuple(cells(line)) != HEADER:
            continue
        rows: list[Row] = []
        for number, body in enumerate(lines[index + 2 :], start=index + 3):
            if not body.startswith("|"):
                break
            values = cells(body)
            padded = [*values, *[""] * (len(HEADER) - len(values))]
            rows.append(Row(number, len(values), *padded[: len(HEADER)]))
        found.append(rows)
    return found


def document() -> str:
    return DOC.read_text(encoding="utf-8") if DOC.is_file() else ""


def advisories() -> list[Row]:
    found = tables(document())
    return found[0] if found else []


def direct_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = (Requirement(line) for line in project["dependencies"])
    return {canonicalize_name(r.name): r for r in requirements}


def lower_bound(requirement: Requirement) -> Version | None:
    """The least version the specifier admits from below, ``None`` if it sets no floor."""
    floors = [
        Version(spec.version)
        for spec in requirement.specifier
        if spec.operator in (">=", ">", "~=", "==", "===") and "*" not in spec.version
    ]
    return max(floors, default=None)


ROWS = advisories()


def test_the_table_is_well_formed() -> None:
    assert len(tables(document())) == 1, f"docs/security.md needs one table headed {HEADER}"
    assert ROWS, "the advisory table has no rows"
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for row in ROWS:
        if row.width != len(HEADER):
            problems.append(f"{row}: has {row.width} cells, not {len(HEADER)}")
        if row.package != canonicalize_name(row.package):
            problems.append(f"{row}: package {row.package!r} is not a normalised PyPI name")
        match = ADVISORY.match(row.advisory)
        if match is None:
            problems.append(
                f"{row}: advisory must read '[GHSA-…](https://github.com/advisories/GHSA-…), "
                f"CVE-…', got {row.advisory!r}"
            )
        elif match["ghsa"] != match["link"]:
            problems.append(f"{row}: the link points at {match['link']}, not {match['ghsa']}")
        if not row.what:
            problems.append(f"{row}: says nothing about what the advisory is")
        try:
            fixed = Version(row.fixed)
        except InvalidVersion:
            problems.append(f"{row}: first fixed {row.fixed!r} is not a version")
        else:
            if fixed.is_prerelease or fixed.local:
                problems.append(f"{row}: first fixed {row.fixed!r} is not a final release")
        if (row.package, row.ghsa) in seen:
            problems.append(f"{row}: listed twice")
        seen.add((row.package, row.ghsa))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.package}-{r.ghsa}" for r in ROWS])
def test_the_installed_release_has_the_fix(row: Row) -> None:
    try:
        installed = metadata.version(row.package)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{row.package} not installed ({row.ghsa} applies once it is)")
    assert Version(installed) >= Version(row.fixed), (
        f"{row.package} {installed} is installed, but {row.ghsa} ({row.advisory.split(', ')[-1]}: "
        f"{row.what}) is first fixed in {row.fixed}; upgrade {row.package} to >={row.fixed}"
    )


def test_pyproject_lower_bounds_exclude_every_listed_vulnerable_release() -> None:
    direct = direct_dependencies()
    highest: dict[str, Row] = {}
    for row in ROWS:
        name = canonicalize_name(row.package)
        if name in direct and (
            name not in highest or Version(row.fixed) > Version(highest[name].fixed)
        ):
            highest[name] = row
    problems = []
    for package, row in sorted(highest.items()):
        requirement = direct[package]
        floor = lower_bound(requirement)
        if floor is None or floor < Version(row.fixed):
            problems.append(
                f"pyproject.toml requires {str(requirement)!r}, which admits releases before "
                f"{row.fixed}, the first with the fix for {row.ghsa}; "
                f"raise it to {requirement.name}>={row.fixed}"
            )
    assert not problems, "\n".join(problems)
