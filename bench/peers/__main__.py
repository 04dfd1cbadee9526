"""``make bench-peers`` (``python -m bench.peers``): the peer table, from this repository.

Set-up (idempotent, in the cache folder: ``$BENCH_PEERS_CACHE``, default
``~/.cache/registry-bench-peers``): wrk (Debian's package, when missing and run as root),
one venv per peer with torch installed first and pinned, the two models. TorchServe is
skipped, with the reason, when no Java 17+ runtime is found.

Then for every round, model and peer: start the server on loopback, check one answer
against torch in-process, warm up, measure each concurrency with wrk (``-t1 -cC``; the
asyncio client of bench/load.py when wrk is missing), stop the server. The peer order is
reversed on odd rounds. JSON lines go to bench/results/peers-<stamp>.jsonl and the
markdown table (medians over the rounds) to stdout.

Peers: naive (FastAPI, sync def), naive-async (FastAPI, async def), litserve (batching),
litserve-nobatch, mlserver-pw0 (inference in the server process), mlserver-pw1 (one
worker process), torchserve, registry (this project), limit (a bare ASGI app, plus the
in-process forward). A full run (2 rounds of 10 s) takes about half an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.launch import exit_on_signal
from bench.peers import BATCH_MS, MAX_BATCH, PEERS, ROOT, cache_dir
from bench.peers.install import TORCH, setup
from bench.peers.report import RESULTS, read, render
from bench.peers.run import Options, run


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "peers", nargs="*", default=PEERS, help=f"peers to run (default: {' '.join(PEERS)})"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds; cells are medians (2)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per cell (10)")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds, c=8 (3)")
    parser.add_argument("--models", default="tiny,medium", help="models (tiny,medium)")
    parser.add_argument("--conc", default="1,8,64", help="concurrencies (1,8,64)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=MAX_BATCH,
        help=f"rows per batch for every batching peer ({MAX_BATCH})",
    )
    parser.add_argument(
        "--batch-ms",
        type=float,
        default=BATCH_MS,
        help=f"batch wait of LitServe, MLServer, TorchServe, ms ({BATCH_MS:g})",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        help="on a shared machine: wait (<= 90 s) until other processes use fewer cores "
        "than this before each cell and redo a disturbed cell at most twice (0: off)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file to append to")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (see above)")
    parser.add_argument("--torch", default=TORCH, help=f"torch requirement, first ({TORCH})")
    parser.add_argument("--no-apt", action="store_true", help="never apt-get install wrk")
    parser.add_argument("--setup-only", action="store_true", help="set up, measure nothing")
    parser.add_argument(
        "--registry-python",
        default=sys.executable,
        help="python that runs `-m registry serve` (this one)",
    )
    parser.add_argument(
        "--registry-root",
        type=Path,
        default=ROOT,
        help="checkout whose `registry` package is measured (this repository)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; known: {' '.join(PEERS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGINT, exit_on_signal)
    args = parse(argv)
    cache = (args.cache or cache_dir()).resolve()
    started = time.monotonic()
    found = setup(cache, args.peers, args.torch, apt=not args.no_apt)
    print(f"[setup] ready in {time.monotonic() - started:.0f}s: {cache}", flush=True)
    if args.setup_only:
        return

    out = args.out or RESULTS / time.strftime("peers-%Y%m%d-%H%M%S.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(record: dict[str, Any]) -> None:
        record["ts"] = time.time()
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")

    peers = [p for p in args.peers if p not in found.skipped]
    opts = Options(
        cache=cache,
        models=_csv(args.models),
        concurrencies=[int(c) for c in _csv(args.conc)],
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        quiet=args.quiet,
        max_batch=args.max_batch,
        batch_ms=args.batch_ms,
        registry_python=args.registry_python,
        registry_root=args.registry_root.resolve(),
    )
    emit(
        {
            "kind": "meta",
            "peers": peers,
            "models": opts.models,
            "conc": opts.concurrencies,
            "rounds": opts.rounds,
            "duration": opts.duration,
            "max_batch": opts.max_batch,
            "batch_ms": opts.batch_ms,
            "load": "wrk" if found.wrk else "bundled asyncio client",
            "versions": found.versions,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "root": ROOT.name,
        }
    )
    for peer, reason in found.skipped.items():
        emit({"kind": "skipped", "peer": peer, "error": reason})
    print(f"results -> {out}", flush=True)
    run(peers, opts, emit)
    print("\n" + render(read([out])))
    print(f"\nJSON lines: {out}")


if __name__ == "__main__":
    main()
