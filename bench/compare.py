"""``make bench-compare BASE=<commit>``: this checkout against an older one, in one run.

Whether a change made a cell slower cannot be read off two ``make bench`` runs made at
different times: on a shared machine the same code moves by 10-30 % between runs. So
this serves the bench's ``tiny`` and ``medium`` MLPs from both checkouts at once (the
older one from a ``git worktree`` of ``--base``, on this environment's packages), checks
that both answer as torch does, and loads them in turn, cell by cell, the order swapped
every round so that drift favours neither. Per cell it reports the medians over the
rounds of requests per second and of the server's CPU per request (its whole process, so
both threads), and the ratio of this checkout to the base: the CPU per request moves
less with foreign load than throughput does. Each round's two runs are back to back, so
the lowest and highest of the rounds' own ratios show how far the machine's noise
reaches, and a cell marked slower says in how many rounds it was. Results: a table on
stdout, JSON in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import MODELS
from bench.__main__ import build, check
from bench.launch import free_port, launch, registry_serve
from bench.peers.run import measure
from bench.rounds import in_turns, paired_ratios

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("base", "head")
GIT = shutil.which("git") or "git"
SLOWER = 0.95  # NOTE: the bar for a change: no cell more than 5 % slower than before


@dataclass(frozen=True)
class Server:
    url: str
    pgid: int


@contextmanager
def worktree(commit: str, repository: Path = ROOT) -> Iterator[Path]:
    """A detached ``git worktree`` of ``commit``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-base-") as scratch:
        tree = Path(scratch) / "tree"
        run_git("worktree", "add", "--detach", str(tree), commit, repository=repository)
        try:
            yield tree
        finally:
            # NOTE: not run_git: a failure here must not hide the one that brought us here
            command = [GIT, "-C", str(repository), "worktree", "remove", "--force", str(tree)]
            subprocess.run(command, check=False, capture_output=True)


@contextmanager
def serving(side: str, root: Path, work: Path) -> Iterator[Server]:
    """The checkout at ``root`` serving the bench's manifest, from its own folder (so that
    ``python -m registry`` imports that checkout's code, not this one's)."""
    port = free_port()
    command, env = registry_serve(work / "models.yaml", port, root=root)
    url = f"http://127.0.0.1:{port}"
    with launch(side, command, env, root, work / f"{side}.log", f"{url}/readyz") as pgid:
        yield Server(url, pgid)


def cell(server: Server, model: str, body: bytes, conc: int, seconds: float) -> dict[str, Any]:
    """One load run: its figures and the server's CPU per request."""
    measured = measure(f"{server.url}/models/{model}/predict", body, conc, seconds, server.pgid)
    answered = max(int(measured["requests"]), 1)
    return measured | {"cpu_us_per_request": measured["server_cpu_s"] / answered * 1e6}


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, concurrency): each side's medians over its rounds and head ÷ base.

    ``cpu_ratio`` is base ÷ head CPU per request, so that above 1 is better on both."""
    cells: dict[tuple[str, int], dict[str, list[Mapping[str, Any]]]] = {}
    for run in runs:
        sides = cells.setdefault((run["model"], run["conc"]), {side: [] for side in SIDES})
        sides[run["side"]].append(run)
    rows = []
    for (model, conc), sides in cells.items():
        row: dict[str, Any] = {"model": model, "conc": conc}
        for side in SIDES:
            row[f"{side}_rps"] = statistics.median(float(r["rps"]) for r in sides[side])
            row[f"{side}_cpu_us"] = statistics.median(
                float(r["cpu_us_per_request"]) for r in sides[side]
            )
            row[f"{side}_p99_ms"] = statistics.median(float(r["p99_ms"]) for r in sides[side])
        row["rps_ratio"] = row["head_rps"] / max(row["base_rps"], 1e-9)
        row["cpu_ratio"] = row["base_cpu_us"] / max(row["head_cpu_us"], 1e-9)
        row["round_ratios"] = paired_ratios(sides["base"], sides["head"])
        row["slower"] = row["rps_ratio"] < SLOWER
        row["slower_rounds"] = sum(ratio < SLOWER for ratio in row["round_ratios"])
        # NOTE: wrk counts an answer that is not a 2xx as served: a cell with any is suspect
        row["failed"] = sum(int(r["non2xx"]) + int(r["errors"]) for s in sides.values() for r in s)
        rows.append(row)
    return rows


def table(rows: Sequence[Mapping[str, Any]], base: str, head: str) -> str:
    lines = [
        f"| model | c | base {base} req/s | head {head} req/s | head ÷ base (rounds) | "
        "CPU µs/request base | head | base ÷ head | p99 ms base | head |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratios = r["round_ratios"]
        spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        flag = " **slower**" if r["slower"] else ""
        if ratios and (r["slower"] or r["slower_rounds"]):
            flag += f", slower in {r['slower_rounds']} of {len(ratios)} rounds"
        if r["failed"]:
            flag += f" ({r['failed']} not 2xx or unanswered)"
        lines.append(
            f"| {r['model']} | {r['conc']} | {r['base_rps']:.0f} | {r['head_rps']:.0f} | "
            f"{r['rps_ratio']:.2f}x{spread}{flag} | "
            f"{r['base_cpu_us']:.0f} | {r['head_cpu_us']:.0f} | "
            f"{r['cpu_ratio']:.2f}x | {r['base_p99_ms']:.2f} | {r['head_p99_ms']:.2f} |"
        )
    return "\n".join(lines)


def run_git(*arguments: str, repository: Path = ROOT) -> str:
    """``git`` in ``repository``: its output, or ``CalledProcessError`` with its stderr."""
    command = [GIT, "-C", str(repository), *arguments]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def describe(commit: str, repository: Path = ROOT) -> str:
    """The short commit; for the working tree (``HEAD``), with ``+`` when it has changes."""
    short = run_git(
        "rev-parse", "--short", "--verify", f"{commit}^{{commit}}", repository=repository
    )
    if commit == "HEAD" and run_git("status", "--porcelain", repository=repository):
        short += "+"
    return short


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--models", default=",".join(MODELS), help=f"of {', '.join(MODELS)}")
    parser.add_argument("--conc", default="1,8,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if unknown := set(names) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}; known: {list(MODELS)}")
    concurrencies = [int(c) for c in args.conc.split(",")]
    if not args.base.strip():
        parser.error("--base is required: the commit to compare against")
    try:
        base, head = describe(args.base), describe("HEAD")
    except subprocess.CalledProcessError as exc:
        parser.error(f"--base {args.base!r}: {exc.stderr.strip() or 'not a commit here'}")

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        work = Path(scratch)
        samples = build(work, names)
        roots = {"base": stack.enter_context(worktree(args.base)), "head": ROOT}
        servers = {side: stack.enter_context(serving(side, roots[side], work)) for side in SIDES}
        for name in names:
            body = json.dumps({"inputs": samples[name].tolist()}).encode()
            for side in SIDES:
                check(f"{servers[side].url}/models/{name}/predict", body, name, work)
                cell(servers[side], name, body, 8, args.warmup)
            for conc in concurrencies:
                for round_, side in in_turns(SIDES, args.rounds):
                    run = cell(servers[side], name, body, conc, args.duration)
                    runs.append({"side": side, "model": name, "conc": conc, "round": round_} | run)
                    print(
                        f"  {side} {name:7} c={conc:<3} {run['rps']:9.1f} req/s  "
                        f"{run['cpu_us_per_request']:6.0f} µs CPU/request  "
                        f"p99 {run['p99_ms']:7.2f} ms  non-2xx {run['non2xx']}",
                        flush=True,
                    )
    rows = summarize(runs)
    markdown = table(rows, base, head)
    print(f"\n{markdown}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "bench" / "results" / f"compare-{base}-{head}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {"base": base, "head": head, "rows": rows, "runs": runs, "markdown": markdown}
    out.write_text(json.dumps(saved, indent=2))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
