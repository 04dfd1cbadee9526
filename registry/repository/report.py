"""What a reload says it did: the report the admin API answers, and one log line.

Every reload, whatever started it (admin API, SIGHUP, the poller), ends in exactly one
structured log line saying who asked, the outcome and what changed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from registry.buckets import Buckets
from registry.errors import RegistryError
from registry.keys import VersionKey
from registry.model import LoadedModel
from registry.repository.planning import AliasMove, Plan

log = logging.getLogger(__name__)


LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds, in seconds, of the load-duration histogram: from a tiny state dict to a
large checkpoint read from a slow disk."""


@dataclass
class LoadTally:
    """Every load so far, at start-up and on reload: outcomes and durations per model,
    for ``/metrics``.

    NOTE: written on the event loop only (each load's end), read by a scrape there too.
    """

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(model, ``loaded``, ``failed`` or ``refused``: no room in the budget) -> loads."""
    durations: dict[str, Buckets] = field(default_factory=dict)
    """model -> its loads' seconds, per ``LOAD_BUCKETS`` bucket (refused ones are not)."""

    def add(self, model: str, outcome: str, seconds: float) -> None:
        self.outcomes[model, outcome] += 1
        if outcome != "refused":
            self.durations.setdefault(model, Buckets(LOAD_BUCKETS)).add(seconds)


class LoadTiming(BaseModel):
    version: str
    load_ms: float
    warmup_ms: float


class FailedVersion(BaseModel):
    version: str
    reason: str


class ReloadReport(BaseModel):
    """What a reload changed (or, with ``dry_run``, would change), as the admin API answers."""

    dry_run: bool = False
    applied: bool
    added: list[str]
    removed: list[str]
    reloaded: list[str]
    unchanged: list[str]
    deferred: list[str] = []
    """Lazy versions among the added and reloaded, left unloaded until a request asks."""
    failed: list[FailedVersion]
    alias_moves: list[AliasMove]
    loads: list[LoadTiming]
    duration_ms: float

    @classmethod
    def of(
        cls,
        plan: Plan,
        *,
        applied: bool,
        dry_run: bool = False,
        failed: Mapping[VersionKey, str] | None = None,
        loaded: Mapping[VersionKey, LoadedModel] | None = None,
        duration_ms: float = 0.0,
    ) -> ReloadReport:
        loads = [
            LoadTiming(
                version=str(key),
                load_ms=round(model.load_ms, 3),
                warmup_ms=round(model.warmup_ms, 3),
            )
            for key, model in (loaded or {}).items()
        ]
        return cls(
            dry_run=dry_run,
            applied=applied,
            added=[str(k) for k in plan.added],
            removed=[str(k) for k in plan.removed],
            reloaded=[str(k) for k in plan.reloaded],
            unchanged=[str(k) for k in plan.unchanged],
            deferred=[str(k) for k in plan.deferred],
            failed=[FailedVersion(version=str(k), reason=r) for k, r in (failed or {}).items()],
            alias_moves=list(plan.alias_moves),
            loads=loads,
            duration_ms=round(duration_ms, 3),
        )

    def summary(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("added", self.added),
                ("removed", self.removed),
                ("reloaded", self.reloaded),
                ("deferred", self.deferred),
                (
                    "aliases",
                    [f"{m.model}/{m.alias}:{m.before}->{m.after}" for m in self.alias_moves],
                ),
                ("failed", [f.version for f in self.failed]),
            )
            if value
        ]
        parts.append(f"unchanged={len(self.unchanged)}")
        return " ".join(parts)


def log_refused(actor: str, dry_run: bool, exc: RegistryError) -> None:
    log.warning(
        "reload by %s refused, nothing changed: %s",
        actor,
        exc.message,
        extra={
            "event": "reload",
            "actor": actor,
            "dry_run": dry_run,
            "outcome": exc.code,
            "report": exc.details.get("report", {}),
        },
    )


def log_done(actor: str, outcome: str, report: ReloadReport) -> None:
    log.info(
        "reload by %s %s in %.0f ms: %s",
        actor,
        outcome,
        report.duration_ms,
        report.summary(),
        extra={
            "event": "reload",
            "actor": actor,
            "dry_run": report.dry_run,
            "outcome": outcome,
            "report": report.model_dump(),
        },
    )
