"""The peer table as markdown, from the JSON lines ``python -m bench.peers`` writes.

    python -m bench.peers.report                  # the newest bench/results/peers-*.jsonl
    python -m bench.peers.report FILE.jsonl ...   # these runs, merged
    python -m bench.peers.report --max-other 0.2  # drop runs disturbed by > 0.2 foreign cores

Every figure is the MEDIAN over the repeats found (rounds, and runs when several files are
given). Tables: req/s and p99 per peer, model and concurrency with the limit rows (the
bare HTTP app, the in-process forward at batch min(c, 16), and the smaller of the two);
server CPU; spread over repeats and foreign CPU; failures and skipped peers.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers import MAX_BATCH, PEERS, ROOT

RESULTS = ROOT / "bench" / "results"

LABELS = {
    "naive": "FastAPI, sync `def`",
    "naive-async": "FastAPI, `async def`",
    "litserve": "LitServe, batching",
    "litserve-nobatch": "LitServe, no batching",
    "mlserver-pw0": "MLServer, in-process",
    "mlserver-pw1": "MLServer, 1 worker",
    "torchserve": "TorchServe",
    "registry": "**registry**",
    "limit": "limit: bare HTTP",
}

Record = dict[str, Any]
Key = tuple[str, str, int]  # peer, model, concurrency


@dataclass(frozen=True)
class Cell:
    """One (peer, model, concurrency): medians over its repeats."""

    rps: float
    p50_ms: float
    p99_ms: float
    server_cores: float
    server_cpu_ms: float  # server CPU per request
    load_cores: float
    other_cores: float
    bad: int  # non-2xx answers and socket errors, summed over the repeats
    n: int
    lo: float
    hi: float


def read(paths: Iterable[Path]) -> list[Record]:
    records: list[Record] = []
    for path in paths:
        with path.open() as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def _per_s(r: Record, key: str) -> float:
    return float(r.get(key, 0.0)) / max(float(r["wall_s"]), 1e-9)


def cells(records: list[Record], max_other: float | None = None) -> dict[Key, Cell]:
    grouped: dict[Key, list[Record]] = defaultdict(list)
    for r in records:
        if r.get("kind") != "http":
            continue
        if max_other is not None and _per_s(r, "other_cpu_s") > max_other:
            continue
        grouped[(r["peer"], r["model"], int(r["conc"]))].append(r)
    found = {}
    for key, rs in grouped.items():
        median = statistics.median
        found[key] = Cell(
            rps=median(float(r["rps"]) for r in rs),
            p50_ms=median(float(r["p50_ms"]) for r in rs),
            p99_ms=median(float(r["p99_ms"]) for r in rs),
            server_cores=median(_per_s(r, "server_cpu_s") for r in rs),
            server_cpu_ms=median(r["server_cpu_s"] * 1e3 / max(r["requests"], 1) for r in rs),
            load_cores=median(_per_s(r, "load_cpu_s") for r in rs),
            other_cores=median(_per_s(r, "other_cpu_s") for r in rs),
            bad=sum(int(r["non2xx"]) + int(r["errors"]) for r in rs),
            n=len(rs),
            lo=min(float(r["rps"]) for r in rs),
            hi=max(float(r["rps"]) for r in rs),
        )
    return found


def forward(records: list[Record]) -> dict[tuple[str, str, int], float]:
    """(model, loader, batch) -> median in-process samples/s."""
    grouped: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "forward":
            grouped[(r["model"], r["loader"], int(r["batch"]))].append(float(r["sps"]))
    return {key: statistics.median(v) for key, v in grouped.items()}


def render(records: list[Record], max_other: float | None = None) -> str:
    table = cells(records, max_other)
    fwd = forward(records)
    models = [m for m in ("tiny", "medium") if any(k[1] == m for k in table)]
    models += sorted({k[1] for k in table} - set(models))
    columns = [(m, c) for m in models for c in sorted({k[2] for k in table})]
    peers = [p for p in PEERS if any(k[0] == p for k in table)]
    peers += sorted({k[0] for k in table} - set(peers))

    metas = [r for r in records if r.get("kind") == "meta"]
    cap = int(metas[-1].get("max_batch", MAX_BATCH)) if metas else MAX_BATCH

    def fwd_sps(model: str, conc: int) -> float | None:
        return fwd.get((model, "state", min(conc, cap)))

    def limit(model: str, conc: int) -> float | None:
        http = table.get(("limit", model, conc))
        found = [v for v in (http.rps if http else None, fwd_sps(model, conc)) if v]
        return min(found) if found else None

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    head = "| peer | " + " | ".join(f"{m} c={c}" for m, c in columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    out = ["### Throughput (req/s) / p99 latency (ms), medians", "", head, rule]

    def row(label: str, values: list[str]) -> None:
        out.append(f"| {label} | " + " | ".join(values) + " |")

    for peer in peers:
        values = []
        for m, c in columns:
            x = table.get((peer, m, c))
            text = "-" if x is None else f"{x.rps:.0f} / {x.p99_ms:.1f}"
            if x is not None and x.bad:
                text += f" (errors {x.bad})"
            if peer == "registry" and x is not None:
                text = f"**{text}**"
            values.append(text)
        row(LABELS.get(peer, peer), values)
    if fwd:
        row(
            f"limit: forward, samples/s (eager, batch min(c, {cap}))",
            [number(fwd_sps(m, c)) for m, c in columns],
        )
    if any(k[0] == "limit" for k in table) or fwd:
        row("limit (bare HTTP, or forward)", [number(limit(m, c)) for m, c in columns])
    repeats = sorted({x.n for x in table.values()})
    out += ["", f"Cell: median req/s / median p99 ms; repeats per cell: {repeats}.", ""]

    out += ["### Server CPU: cores busy / CPU-ms per request", "", head, rule]
    for peer in peers:
        values = []
        for m, c in columns:
            x = table.get((peer, m, c))
            values.append("-" if x is None else f"{x.server_cores:.2f} / {x.server_cpu_ms:.2f}")
        row(peer, values)
    values = []
    for m, c in columns:
        loads = [x.load_cores for (_, mm, cc), x in table.items() if (mm, cc) == (m, c)]
        values.append(f"{min(loads):.2f}-{max(loads):.2f}" if loads else "-")
    row("load generator (min-max over peers)", values)

    out += ["", "### Spread over repeats (min-max req/s) and foreign CPU (cores)", "", head, rule]
    for peer in peers:
        values = []
        for m, c in columns:
            x = table.get((peer, m, c))
            values.append("-" if x is None else f"{x.lo:.0f}-{x.hi:.0f}, {x.other_cores:.2f}")
        row(peer, values)

    problems = [r for r in records if r.get("kind") in ("error", "skipped")]
    if problems:
        out += ["", "### Failures and skipped peers", ""]
        for r in problems:
            where = f"round {r['round']}: " if "round" in r else ""
            model = f"/{r['model']}" if "model" in r else ""
            out.append(f"- {r['kind']}: {where}{r['peer']}{model}: {r['error']}")
    tools = sorted({str(r.get("tool")) for r in records if r.get("kind") == "http"})
    if tools:
        out += ["", "Load generator: " + ", ".join(tools) + "."]
    return "\n".join(out)


def newest() -> list[Path]:
    runs = sorted(RESULTS.glob("peers-*.jsonl"))
    if not runs:
        raise SystemExit(f"no peers-*.jsonl in {RESULTS}: run `make bench-peers` first")
    return runs[-1:]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="*", type=Path, help="result files (default: newest)")
    parser.add_argument(
        "--max-other",
        type=float,
        default=None,
        help="drop measurements during which other processes used more cores than this",
    )
    args = parser.parse_args()
    print(render(read(args.files or newest()), args.max_other))


if __name__ == "__main__":
    main()
