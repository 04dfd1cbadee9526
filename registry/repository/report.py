"""What a reload says it did: the report the admin API answers, and one log line.

Every reload, whatever started it (admin API, SIGHUP, the poller), ends in exactly one
structured log line saying who asked, the outcome and what changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pydantic import BaseModel

from registry.errors import RegistryError
from registry.keys import VersionKey
from registry.model import LoadedModel
from registry.repository.planning import AliasMove, Plan

log = logging.getLogger(__name__)


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
