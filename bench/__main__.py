"""``make bench`` (``python -m bench``): serve two MLPs and a sentence encoder over loopback.

For each MLP (``tiny`` 64-128-10, HTTP-bound; ``medium`` 512-2048-2048-512,
compute-bound) and each concurrency, the same load runs against

- this project (``python -m registry serve``, batching up to 16 rows),
- a tutorial-style FastAPI app (``bench/tutorial_app.py``),

and beside them the in-process forward limit (samples/s at batch 1 and 16). For
``minilm`` (all-MiniLM-L6-v2, one sentence per request) the peer is LitServe with its own
batching instead, on the same tokenizer, encoder and weights, and the table adds the rows
per forward pass each side ran (``bench/minilm.py``). ``protocols`` serves ``medium`` over
V2 JSON, V2 binary and gRPC from one server, and V2 JSON again with tracing on
(``bench/protocols.py``). Ratios come from the same run, so a noisy machine moves both
sides. Results: tables on stdout and JSON in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from bench import MAX_BATCH, MODELS, load, minilm, protocols
from bench.launch import free_port, launch, registry_serve
from registry.examples.mlp import MLP

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (minilm.NAME, protocols.NAME)  # beside the MLPs, selected by --models too


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--models",
        default=",".join([*MODELS, *SECTIONS]),
        help=f"of {', '.join([*MODELS, *SECTIONS])} (all)",
    )
    parser.add_argument("--conc", default="1,8,64")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--litserve-batch-ms",
        type=float,
        default=minilm.LITSERVE_BATCH_MS,
        help=f"LitServe's batch_timeout for minilm, ms ({minilm.LITSERVE_BATCH_MS:g})",
    )
    parser.add_argument(
        "--litserve-threads",
        type=int,
        default=0,
        help="torch intra-op threads of LitServe's worker for minilm (0: torch's default)",
    )
    parser.add_argument(
        "--litserve-workers",
        type=int,
        default=1,
        help="LitServe's workers_per_device for minilm (1, its default)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=None,
        help="this project's instances for minilm, instead of models.yaml's (an A/B)",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        help="minilm, on a shared machine: wait (<= 90 s) until other processes use fewer "
        "cores than this before each cell, redo a disturbed cell at most twice (0: off)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="minilm: every cell this many times, the servers taking turns; the report "
        "gives each cell's median round and the median ratio (3)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    requested = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(requested) - {*MODELS, *SECTIONS}
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {[*MODELS, *SECTIONS]}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    names = [n for n in requested if n in MODELS]
    concurrencies = [int(c) for c in args.conc.split(",")]

    encoder: dict[str, Any] | None = None  # the minilm section's results
    wire: dict[str, Any] | None = None  # the protocols section's results
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        served = names
        if protocols.NAME in requested and protocols.MODEL not in names:
            served = [*names, protocols.MODEL]
        samples = build(work, served)
        limits = {name: forward_limit(name) for name in names}
        results: list[dict[str, Any]] = []
        for name in names:
            body = json.dumps({"inputs": samples[name].tolist()}).encode()
            for server in ("registry", "tutorial"):
                with serving(server, work) as url:
                    target = f"{url}/models/{name}/predict"
                    check(target, body, name, work)
                    load.run(target, body, 8, args.warmup)
                    for conc in concurrencies:
                        result = load.run(target, body, conc, args.duration)
                        results.append(
                            {"server": server, "model": name, "conc": conc} | result.as_dict()
                        )
                        print(
                            f"  {server:9} {name:7} c={conc:<3} {result.rps:9.1f} req/s  "
                            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                            f"non-2xx {result.non2xx}",
                            flush=True,
                        )
        if protocols.NAME in requested:
            sample = samples[protocols.MODEL]
            expected = reference(protocols.MODEL, work, sample)
            opts = protocols.Options(concurrencies, args.duration, args.warmup)
            wire = protocols.run(work, sample, expected, opts)
        if minilm.NAME in requested:
            encoder_opts = minilm.Options(
                concurrencies,
                args.duration,
                args.warmup,
                args.litserve_batch_ms,
                args.litserve_threads,
                args.litserve_workers,
                args.quiet,
                args.instances,
                args.rounds,
            )
            encoder = minilm.run(work, encoder_opts)
            results += encoder["results"]
    if names:
        report(results, limits, concurrencies, names)
    if wire is not None:
        wire["markdown"] = protocols.tables(wire, concurrencies)
        print(f"\n{wire['markdown']}")
    if encoder is not None:
        minilm.report(encoder, concurrencies)
    out = args.out or ROOT / "bench" / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    saved: dict[str, Any] = {"results": results, "forward_limit": limits}
    if wire is not None:
        # NOTE: its rows stay in its own entry: they are the main section's model and
        # server, and would read as its cells.
        saved[protocols.NAME] = wire
    if encoder is not None:
        saved[minilm.NAME] = {k: v for k, v in encoder.items() if k != "results"}
    out.write_text(json.dumps(saved, indent=2))
    print(f"\nJSON: {out}")


def build(work: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Weights (seeded), one sample input each, and the registry manifest."""
    (work / "weights").mkdir()
    lines = ["models:"]
    samples = {}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        widths = MODELS[name]
        torch.save(MLP(widths).state_dict(), work / "weights" / f"{name}.pt")
        samples[name] = torch.randn(1, widths[0]).numpy()
        lines += [
            f"  - name: {name}",
            f"    input: {{shape: [{widths[0]}], dtype: float32}}",
            f"    batching: {{max_batch_size: {MAX_BATCH}}}",
            "    versions:",
            '      - {version: "1", format: state_dict, path: ' + f"{name}.pt,",
            "         architecture: 'registry.examples.mlp:MLP',",
            f"         architecture_args: {{widths: {widths}}}}}",
        ]
    (work / "models.yaml").write_text("\n".join(lines) + "\n")
    return samples


def forward_limit(name: str) -> dict[str, float]:
    """In-process samples/s at batch 1 and MAX_BATCH: what no server can beat."""
    torch.manual_seed(0)
    model = MLP(MODELS[name]).eval()
    limits = {}
    for batch in (1, MAX_BATCH):
        x = torch.randn(batch, MODELS[name][0])
        with torch.inference_mode():
            for _ in range(20):
                model(x)
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < 1.0:
                model(x)
                count += 1
        limits[f"batch_{batch}"] = round(count * batch / (time.perf_counter() - started), 1)
    return limits


@contextmanager
def serving(server: str, work: Path) -> Iterator[str]:
    port = free_port()
    if server == "registry":
        command, env = registry_serve(work / "models.yaml", port)
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        specs = {
            n: [w, str(work / "weights" / f"{n}.pt")]
            for n, w in MODELS.items()
            if (work / "weights" / f"{n}.pt").exists()
        }
        env["BENCH_MODELS"] = json.dumps(specs)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.tutorial_app:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    url = f"http://127.0.0.1:{port}"
    with launch(server, command, env, ROOT, work / f"{server}.log", f"{url}/readyz"):
        yield url


def reference(name: str, work: Path, inputs: Any) -> np.ndarray:
    """The model's output for ``inputs`` (a batch), computed by torch in-process."""
    model = MLP(MODELS[name]).eval()
    model.load_state_dict(torch.load(work / "weights" / f"{name}.pt", weights_only=True))
    with torch.inference_mode():
        expected: np.ndarray = model(torch.as_tensor(inputs)).numpy()
    return expected


def check(target: str, body: bytes, name: str, work: Path) -> None:
    """One answer must equal torch in-process before anything is timed."""
    expected = reference(name, work, json.loads(body)["inputs"])
    headers = {"content-type": "application/json"}
    answer = httpx.post(target, content=body, headers=headers, timeout=30)
    got = np.array(answer.json()["outputs"])
    if not np.allclose(got, expected, atol=1e-4):
        raise SystemExit(f"{target} answered {got}, torch says {expected}")


def report(
    results: list[dict[str, Any]],
    limits: dict[str, dict[str, float]],
    concurrencies: list[int],
    names: list[str],
) -> None:
    cell = {(r["server"], r["model"], r["conc"]): r for r in results}
    print(
        "\n| model | c | registry req/s | p50 ms | p99 ms | tutorial req/s | p50 ms | p99 ms "
        "| registry ÷ tutorial | registry ÷ forward limit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        for conc in concurrencies:
            ours, theirs = cell[("registry", name, conc)], cell[("tutorial", name, conc)]
            batch = "batch_1" if conc == 1 else f"batch_{MAX_BATCH}"
            limit = limits[name][batch]
            ratio = float(ours["rps"]) / max(float(theirs["rps"]), 1e-9)
            print(
                f"| {name} | {conc} | {ours['rps']} | {ours['p50_ms']:.2f} | "
                f"{ours['p99_ms']:.2f} | {theirs['rps']} | {theirs['p50_ms']:.2f} | "
                f"{theirs['p99_ms']:.2f} | {ratio:.2f}x | "
                f"{float(ours['rps']) / limit:.2f} ({batch}: {limit:.0f}/s) |"
            )


if __name__ == "__main__":
    main()
