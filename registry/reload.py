"""The parts of a reload that need no registry internals: loading a plan, the outcome line.

``ModelRegistry.reload`` holds the lock, builds the plan and swaps the table; this module
loads what the plan asks for and says what happened, as one structured log line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from registry.diff import Plan, ReloadReport
from registry.errors import RegistryError, ReloadFailed
from registry.keys import VersionKey
from registry.manifest import ModelSpec, VersionSpec
from registry.model import LoadedModel

log = logging.getLogger(__name__)

Fresh = dict[VersionKey, LoadedModel]
Load = Callable[[ModelSpec, VersionSpec], Awaitable[LoadedModel]]


async def load_plan(plan: Plan, load: Load, failed: dict[VersionKey, str]) -> Fresh:
    """Load the plan's new and changed versions; stops at the first failure (into ``failed``).

    Nothing loaded here is started or served until the caller swaps it in.
    """
    fresh: Fresh = {}
    for key in plan.to_load:
        try:
            fresh[key] = await load(*plan.specs(key))
        except RegistryError as exc:
            failed[key] = exc.message
            break
    return fresh


def refusal(report: ReloadReport) -> ReloadFailed:
    reasons = "; ".join(f"{f.version}: {f.reason}" for f in report.failed)
    return ReloadFailed(f"reload refused, nothing changed: {reasons}", report=report.model_dump())


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
