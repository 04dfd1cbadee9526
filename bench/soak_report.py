"""What ``make soak`` counts while it runs, and the report it ends with."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

REQUESTS = ("good/", "bad/")  # the kinds counted as requests; also "slow/..." and "reload"
EXAMPLES = 10  # wrong answers and off-contract statuses kept verbatim, per report


@dataclass
class ReloadOutcome:
    at_s: float
    status: int | str
    latency_ms: float
    server_ms: float | None
    reloaded: list[str]
    alias_moves: list[str]
    problem: str | None  # None: applied, and changed what the edit changed

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class SlowOutcome:
    outcome: str  # "408" (or another status), "closed", "unanswered"
    held_s: float


@dataclass
class Tally:
    """Filled by the load, reload and slow-client tasks, all on one event loop."""

    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    wrong: list[str] = field(default_factory=list)
    wrong_count: int = 0
    errors: list[str] = field(default_factory=list)
    off_contract: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    reloads: list[ReloadOutcome] = field(default_factory=list)
    slow: list[SlowOutcome] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    answered: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the soak when sent, seconds to answer) for every good request."""
    cpu: dict[str, float] = field(default_factory=dict)  # seconds while the load ran

    def count(self, kind: str, status: int | str) -> None:
        self.statuses[kind][str(status)] += 1

    def transport_error(self, kind: str, path: str, exc: Exception) -> None:
        self.count(kind, f"error:{type(exc).__name__}")
        if len(self.errors) < EXAMPLES:
            self.errors.append(f"{kind} {path}: {type(exc).__name__}: {exc}")

    def wrong_answer(self, kind: str, path: str, reason: str) -> None:
        self.wrong_count += 1
        if len(self.wrong) < EXAMPLES:
            self.wrong.append(f"{kind} {path}: {reason}")


@dataclass
class Report:
    seconds: float
    requests: int
    statuses: dict[str, dict[str, int]]
    latency_ms: dict[str, dict[str, float]]
    reloads: list[dict[str, Any]]
    reload_ms: dict[str, float]
    stall_ms: dict[str, float]
    slow: dict[str, Any]
    rss_mib: dict[str, float] | None
    cpu_s: dict[str, float]
    server_5xx: int
    wrong_answers: int
    wrong_examples: list[str]
    bad_not_4xx: dict[str, dict[str, int]]
    off_contract: dict[str, dict[str, int]]
    transport_errors: dict[str, int]
    error_examples: list[str]
    server_exit: int | None
    failures: list[str]
    server_log_tail: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


def build_report(
    tally: Tally,
    seconds: float,
    server_exit: int | None,
    crashed: str | None,
    *,
    slow_deadline: float = float("inf"),
) -> Report:
    statuses = {kind: dict(sorted(c.items())) for kind, c in sorted(tally.statuses.items())}
    requests = sum(sum(c.values()) for kind, c in statuses.items() if kind.startswith(REQUESTS))
    server_5xx = sum(
        n for c in statuses.values() for status, n in c.items() if status.startswith("5")
    )
    bad_not_4xx = {
        kind.removeprefix("bad/"): {s: n for s, n in c.items() if not s.startswith("4")}
        for kind, c in statuses.items()
        if kind.startswith("bad/") and any(not s.startswith("4") for s in c)
    }
    errors = {
        kind: sum(n for s, n in c.items() if s.startswith("error"))
        for kind, c in statuses.items()
        if any(s.startswith("error") for s in c)
    }
    reload_latencies = [r.latency_ms for r in tally.reloads]
    slow = Counter(s.outcome for s in tally.slow)
    rss = (
        {
            "start": tally.rss[0] / 2**20,
            "end": tally.rss[-1] / 2**20,
            "max": max(tally.rss) / 2**20,
        }
        if tally.rss
        else None
    )
    failures = []
    if crashed:
        failures.append(crashed)
    if server_5xx:
        failures.append(f"{server_5xx} answers were 5xx")
    if tally.wrong_count:
        failures.append(f"{tally.wrong_count} wrong answers")
    if bad_not_4xx:
        failures.append(f"bad requests not refused with a 4xx: {sorted(bad_not_4xx)}")
    good_errors = {k: n for k, n in errors.items() if k.startswith("good/")}
    if good_errors:
        failures.append(f"good requests without an answer: {good_errors}")
    failed_reloads = [r for r in tally.reloads if not r.ok]
    if failed_reloads:
        failures.append(f"{len(failed_reloads)} of {len(tally.reloads)} reloads failed")
    held = [s.held_s for s in tally.slow if s.outcome == "unanswered" and s.held_s > slow_deadline]
    if held:
        failures.append(
            f"{len(held)} slow clients held {max(held):.0f} s without an answer "
            f"(over {slow_deadline:g} s: no body-read deadline?)"
        )
    if server_exit not in (0, None):
        failures.append(f"the server exited {server_exit} on SIGTERM")
    return Report(
        seconds=round(seconds, 1),
        requests=requests,
        statuses=statuses,
        latency_ms={
            protocol: percentiles(values) for protocol, values in sorted(tally.latencies.items())
        },
        reloads=[asdict(r) | {"ok": r.ok} for r in tally.reloads],
        stall_ms=stalls(tally, SWAP_WINDOW_S),
        reload_ms=(
            {
                "p50": round(statistics.median(reload_latencies), 1),
                "max": round(max(reload_latencies), 1),
            }
            if reload_latencies
            else {}
        ),
        slow={
            "outcomes": dict(sorted(slow.items())),
            "longest_held_s": round(max((s.held_s for s in tally.slow), default=0.0), 1),
        },
        rss_mib={k: round(v, 1) for k, v in rss.items()} if rss else None,
        cpu_s={k: round(v, 1) for k, v in tally.cpu.items()},
        server_5xx=server_5xx,
        wrong_answers=tally.wrong_count,
        wrong_examples=tally.wrong,
        bad_not_4xx=bad_not_4xx,
        off_contract={k: dict(c) for k, c in sorted(tally.off_contract.items())},
        transport_errors=errors,
        error_examples=tally.errors,
        server_exit=server_exit,
        failures=failures,
    )


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"count": 0}
    cuts = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else [seconds[0]] * 99
    return {
        "count": len(seconds),
        "p50": round(cuts[49] * 1e3, 2),
        "p99": round(cuts[98] * 1e3, 2),
    }


SWAP_WINDOW_S = 2.0


def stalls(tally: Tally, window_s: float) -> dict[str, float]:
    """The slowest good answers near a reload that swapped a version in, and elsewhere.

    "Near" is sent while the reload ran or up to ``window_s`` after it answered: when the
    retired version is released. A stall there that is absent elsewhere is the release's.
    """
    windows = [
        (r.at_s - r.latency_ms / 1000, r.at_s + window_s) for r in tally.reloads if r.reloaded
    ]
    near: list[float] = []
    elsewhere: list[float] = []
    for began_s, seconds in tally.answered:
        close = any(start <= began_s <= end for start, end in windows)
        (near if close else elsewhere).append(seconds * 1000)
    return {
        "swaps": len(windows),
        "near_swap_max": round(max(near, default=0.0), 1),
        "near_swap_count": len(near),
        "elsewhere_max": round(max(elsewhere, default=0.0), 1),
        "elsewhere_p99": round(_p99(elsewhere), 1),
        "near_swap_p99": round(_p99(near), 1),
    }


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100)[98]


def render(report: Report) -> str:
    lines = [
        f"soak: {report.seconds:.0f} s, {report.requests} requests "
        f"({report.requests / max(report.seconds, 1e-9):.0f}/s)",
        "",
        "good requests (latency over loopback):",
    ]
    for protocol, cut in report.latency_ms.items():
        lines.append(
            f"  {protocol:18} {cut['count']:7.0f}  p50 {cut.get('p50', 0):7.2f} ms  "
            f"p99 {cut.get('p99', 0):7.2f} ms"
        )
    lines += ["", "statuses by kind:"]
    for kind, counts in report.statuses.items():
        shown = "  ".join(f"{status}: {n}" for status, n in counts.items())
        lines.append(f"  {kind:38} {shown}")
    ok = sum(r["ok"] for r in report.reloads)
    lines += [
        "",
        f"reloads: {len(report.reloads)}, {ok} applied as expected; latency "
        + (
            f"p50 {report.reload_ms['p50']:.0f} ms, max {report.reload_ms['max']:.0f} ms"
            if report.reload_ms
            else "-"
        ),
    ]
    stall = report.stall_ms
    lines.append(
        f"slowest answer within {SWAP_WINDOW_S:.0f} s of the {stall['swaps']:.0f} reloads that "
        f"swapped a version: {stall['near_swap_max']:.1f} ms (p99 {stall['near_swap_p99']:.1f}); "
        f"elsewhere: {stall['elsewhere_max']:.1f} ms (p99 {stall['elsewhere_p99']:.1f})"
    )
    lines += [
        f"  at {r['at_s']:5.1f} s: {r['status']} in {r['latency_ms']:.0f} ms "
        f"(server {r['server_ms']} ms){'' if r['ok'] else ' FAILED: ' + str(r['problem'])}"
        for r in report.reloads
    ]
    lines.append(
        f"slow clients: {report.slow['outcomes'] or 'none finished'}, "
        f"longest held {report.slow['longest_held_s']} s"
    )
    if report.rss_mib:
        rss = report.rss_mib
        lines.append(
            f"server RSS: {rss['start']:.1f} MiB at start, {rss['end']:.1f} MiB at end "
            f"({rss['end'] - rss['start']:+.1f}), max {rss['max']:.1f} MiB"
        )
    else:
        lines.append("server RSS: not available on this platform")
    if report.cpu_s:
        lines.append(
            "CPU while the load ran: "
            + ", ".join(
                f"{who} {s:.1f} s ({s / max(report.seconds, 1e-9):.0%} of a core)"
                for who, s in report.cpu_s.items()
            )
        )
    lines.append(f"5xx: {report.server_5xx}   wrong answers: {report.wrong_answers}")
    lines += [f"  {example}" for example in report.wrong_examples]
    if report.transport_errors:
        lines.append(f"no answer (transport errors): {report.transport_errors}")
        lines += [f"  {example}" for example in report.error_examples]
    if report.off_contract:
        lines.append("refused, but not with the status the contract names:")
        lines += [f"  {kind}: {dict(c)}" for kind, c in report.off_contract.items()]
    if report.bad_not_4xx:
        lines.append("bad requests NOT refused with a 4xx:")
        lines += [f"  {kind}: {c}" for kind, c in report.bad_not_4xx.items()]
    lines.append(
        "PASSED" if report.passed else "FAILED:\n" + "\n".join(f"  {f}" for f in report.failures)
    )
    return "\n".join(lines)
