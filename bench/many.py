"""``python -m bench.many``: one model with many versions, served by ``registry serve``.

Every version is the same MLP (``registry.examples.mlp:MLP``, ``--widths``, 6 MiB of
float32 parameters by default) with weights of its own, seeded (``torch.manual_seed`` of
its number), written once to a temporary folder in safetensors with their sha256 in the
manifest, and warmed up when loaded. The manifest is one model, ``mlp``, with versions
``1`` to ``--versions``. Three sections, each with servers of its own:

1. start-up: every version ``load: eager``; seconds from starting the process until
   ``/readyz`` answers 200 (polled every POLL_S), with ``REGISTRY_LOAD_WORKERS=1`` and
   with the default (the number of cores, at most 4), alternating, ``--repeats`` each;
2. loads on demand: every version ``load: lazy``, no budget; one client sends each
   version one request (which loads it), then ``--warm`` requests round-robin over the
   versions, all loaded by then; latency as the client sees it, through HTTP;
3. a budget a third of the weights (``--overcommit 3``): every version lazy, ``--clients``
   closed-loop clients for ``--seconds``, each picking a version by a Zipf law (exponent
   ``--zipf``) and moving on at once after any answer (no retry after a 503). The
   server's RSS (``/proc``) and ``/metrics`` are sampled every SAMPLE_S.

Every 200 is checked against the answer computed in this process when the weights were
made. Warnings and errors the servers logged are printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save_file

from bench.launch import free_port, is_ready, launch, registry_serve
from registry.cores import available_cores
from registry.examples.mlp import MLP
from registry.weightfiles import file_sha256
from tests.integration.server import rss_bytes

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mlp"
ARCHITECTURE = "registry.examples.mlp:MLP"
POLL_S = 0.02
SAMPLE_S = 0.25
MIB = 2**20
LOG_LEVELS = (" WARNING ", " ERROR ", " CRITICAL ")
LOG_LINES = 10
JSON = {"content-type": "application/json"}


@dataclass
class Fleet:
    """The versions written to ``work/weights``, and what each answers to ``body``."""

    work: Path
    widths: list[int]
    versions: list[str]
    body: bytes
    expected: dict[str, np.ndarray]
    param_bytes: int
    """Parameter bytes of one version: what the budget charges for it."""
    logs: dict[str, list[str]] = field(default_factory=dict)
    """Server label -> the warning and error lines of its log, for the last table."""

    def correct(self, version: str, answer: httpx.Response) -> bool:
        got = np.asarray(answer.json()["outputs"], dtype=np.float32)
        return got.shape == self.expected[version].shape and bool(
            np.allclose(got, self.expected[version], atol=1e-4)
        )


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.many", description=__doc__)
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--widths", default="256,1024,1024,256", help="MLP layer widths")
    parser.add_argument("--repeats", type=int, default=3, help="start-ups per setting")
    parser.add_argument("--warm", type=int, default=500, help="requests to loaded versions")
    parser.add_argument("--clients", type=int, default=8, help="budget run: concurrent clients")
    parser.add_argument("--seconds", type=float, default=25.0, help="budget run: duration")
    parser.add_argument("--zipf", type=float, default=1.0, help="budget run: Zipf exponent")
    parser.add_argument(
        "--overcommit", type=float, default=3.0, help="budget run: weights ÷ budget"
    )
    parser.add_argument("--seed", type=int, default=0, help="budget run: request mix")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        fleet = build(Path(scratch), args.versions, widths)
        print(
            f"{args.versions} versions of MLP {widths}: {fleet.param_bytes / MIB:.2f} MiB of "
            f"parameters each, {args.versions * fleet.param_bytes / MIB:.0f} MiB in all "
            f"(written in {time.perf_counter() - began:.1f} s)",
            flush=True,
        )
        startup_table(startup(fleet, args.repeats))
        cold_warm_table(cold_warm(fleet, args.warm))
        budget = int(args.versions * fleet.param_bytes / args.overcommit)
        budget_table(budget_run(fleet, budget, args), args, args.versions * fleet.param_bytes)
        log_table(fleet.logs)
    print(f"\nwhole run: {time.perf_counter() - began:.0f} s")


def build(work: Path, count: int, widths: list[int]) -> Fleet:
    """Seeded weights for versions 1..count (safetensors), one request body, and the
    manifests ``eager.yaml`` and ``lazy.yaml`` beside ``weights/``."""
    sample = torch.randn(1, widths[0], generator=torch.Generator().manual_seed(-1))
    versions, expected = [str(n) for n in range(1, count + 1)], {}
    param_bytes = 0
    for version in versions:
        torch.manual_seed(int(version))
        module = MLP(widths).eval()
        path = work / "weights" / MODEL / version / "model.safetensors"
        path.parent.mkdir(parents=True)
        save_file(module.state_dict(), str(path))
        with torch.inference_mode():
            expected[version] = module(sample).numpy()
        param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    body = httpx.Request("POST", "/", json={"inputs": sample.tolist()}).read()
    fleet = Fleet(work, widths, versions, body, expected, param_bytes)
    for load in ("eager", "lazy"):
        write_manifest(fleet, load)
    return fleet


def write_manifest(fleet: Fleet, load: str) -> None:
    """``work/<load>.yaml``: every version of ``mlp`` with ``load: <load>``."""
    versions = []
    for version in fleet.versions:
        path = f"{MODEL}/{version}/model.safetensors"
        versions.append(
            {
                "version": version,
                "format": "state_dict",
                "path": path,
                "sha256": file_sha256(fleet.work / "weights" / path),
                "architecture": ARCHITECTURE,
                "architecture_args": {"widths": fleet.widths},
            }
        )
    entry = {
        "name": MODEL,
        "input": {"shape": [fleet.widths[0]], "dtype": "float32"},
        "load": load,
        "versions": versions,
    }
    document = yaml.safe_dump({"models": [entry]}, sort_keys=False)
    (fleet.work / f"{load}.yaml").write_text(document)


@contextmanager
def serving(
    fleet: Fleet, load: str, label: str, port: int = 0, **settings: object
) -> Iterator[Server]:
    """``registry serve`` of ``work/<load>.yaml`` on ``port`` (0: a free one) with
    ``REGISTRY_<SETTING>`` from ``settings``, from when ``/readyz`` answers 200; the
    warnings and errors it logged are kept in ``fleet.logs``."""
    port = port or free_port()
    command, env = registry_serve(fleet.work / f"{load}.yaml", port)
    env |= {f"REGISTRY_{k.upper()}": str(v) for k, v in settings.items()}
    url = f"http://127.0.0.1:{port}"
    log = fleet.work / f"{re.sub(r'[^a-z0-9]+', '-', label)}.log"
    try:
        with launch("registry", command, env, ROOT, log, f"{url}/readyz") as pid:
            yield Server(url, pid, log)
    finally:
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()
            noted = [line for line in lines if any(level in line for level in LOG_LEVELS)]
            noted += [line for line in lines if line.startswith("Traceback")]
            if noted:
                fleet.logs[label] = noted


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def p50_p99_ms(seconds: list[float]) -> tuple[float, float]:
    """Median and 99th percentile in ms, interpolated between samples, never beyond them.

    NOTE: ``statistics.quantiles``' default method extrapolates past the largest sample
    when there are fewer than 100 (a p99 above the max); the cold requests are 50.
    """
    if len(seconds) < 2:
        return (seconds[0] * 1e3,) * 2 if seconds else (0.0, 0.0)
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return cuts[49] * 1e3, cuts[98] * 1e3


# --- 1. start-up -------------------------------------------------------------------------


def startup(fleet: Fleet, repeats: int) -> dict[str, list[dict[str, float]]]:
    """Start-ups of the eager manifest, ``REGISTRY_LOAD_WORKERS=1`` and default in turn."""
    runs: dict[str, list[dict[str, float]]] = {"1": [], "default": []}
    for repeat in range(repeats):
        for workers, found in runs.items():
            settings = {} if workers == "default" else {"load_workers": workers}
            port = free_port()
            # NOTE: launch polls /readyz every 0.2 s; this thread polls every POLL_S from
            # before the process starts, so the figure is not rounded up to 0.2 s.
            ready: list[float] = []
            stop = threading.Event()
            url = f"http://127.0.0.1:{port}/readyz"
            poller = threading.Thread(target=_first_ready, args=(url, stop, ready), daemon=True)
            started, wall = time.perf_counter(), time.time()
            poller.start()
            label = f"start-up, load workers {workers}, run {repeat + 1}"
            try:
                with serving(fleet, "eager", label, port, **settings) as server:
                    poller.join()
                    seconds = ready[0] - started
                    text = httpx.get(f"{server.url}/metrics").text
                    rss = rss_bytes(server.pid) or 0
                    loading = _loading_began(server.log)
            finally:
                stop.set()
            run = {
                "ready_s": seconds,
                "setup_s": loading - wall if loading else float("nan"),
                "load_s": metric(text, "registry_load_duration_seconds_sum"),
                "loaded": metric(text, "registry_loads_total", outcome="loaded"),
                "rss_mib": rss / MIB,
            }
            found.append(run)
            print(
                f"  {label}: {seconds:.2f} s to ready ({run['setup_s']:.2f} s before loading "
                f"began), {run['loaded']:.0f} loaded, {run['load_s']:.2f} s summed over loads",
                flush=True,
            )
    return runs


def _loading_began(log: Path) -> float | None:
    """When the server logged that start-up loading began (epoch seconds), if it did.

    NOTE: the log's text format stamps local time to the millisecond; what comes before
    that line is the interpreter, imports (torch), the manifest's validation and the app.
    """
    for line in log.read_text(errors="replace").splitlines():
        if "registry.repository.repository: loading " in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    return None


def _first_ready(url: str, stop: threading.Event, ready: list[float]) -> None:
    """Poll ``url`` every POLL_S until it answers 200, then note when in ``ready``."""
    while not stop.is_set():
        if is_ready(url):
            ready.append(time.perf_counter())
            return
        time.sleep(POLL_S)


def startup_table(runs: dict[str, list[dict[str, float]]]) -> None:
    cores = available_cores()  # NOTE: what Settings.loaders counts
    print(
        "\n### Start-up to ready, all versions eager\n\n"
        "| REGISTRY_LOAD_WORKERS | start to /readyz 200, s (median) | each run, s "
        "| of which before loading began, s (median) | loads summed, s (median) "
        "| RSS at ready, MiB (median) |\n|---|---|---|---|---|---|"
    )
    for workers, found in runs.items():
        shown = workers if workers == "1" else f"default (min(cores, 4) = {min(cores, 4)})"
        each = ", ".join(f"{r['ready_s']:.2f}" for r in found)
        print(
            f"| {shown} | {_median(found, 'ready_s'):.2f} | {each} "
            f"| {_median(found, 'setup_s'):.2f} | {_median(found, 'load_s'):.2f} "
            f"| {_median(found, 'rss_mib'):.0f} |"
        )


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# --- 2. a request that loads its version, and one that finds it loaded ----------------------


@dataclass
class Requests:
    """One kind of request of section 2: client latencies, statuses, and the server's
    load count and summed load seconds once they were all answered."""

    seconds: list[float]
    statuses: Counter[int]
    wrong: int
    loads: float
    load_s: float


def cold_warm(fleet: Fleet, warm: int) -> dict[str, Requests]:
    """Each lazy version's first request, then ``warm`` requests round-robin over them."""
    found: dict[str, Requests] = {}
    with (
        serving(fleet, "lazy", "lazy, no budget") as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        client.get("/readyz")  # NOTE: the connection is open before anything is timed
        count = len(fleet.versions)
        for kind, versions in (
            ("cold", fleet.versions),
            ("warm", [fleet.versions[n % count] for n in range(warm)]),
        ):
            seconds, statuses, wrong = [], Counter[int](), 0
            for version in versions:
                started = time.perf_counter()
                answer = client.post(
                    f"/models/{MODEL}/versions/{version}/predict",
                    content=fleet.body,
                    headers=JSON,
                )
                seconds.append(time.perf_counter() - started)
                statuses[answer.status_code] += 1
                wrong += answer.status_code == 200 and not fleet.correct(version, answer)
            text = client.get("/metrics").text
            loads = metric(text, "registry_loads_total")
            load_s = metric(text, "registry_load_duration_seconds_sum")
            found[kind] = Requests(seconds, statuses, wrong, loads, load_s)
            print(f"  {kind}: {len(versions)} requests, statuses {dict(statuses)}", flush=True)
    return found


def cold_warm_table(found: dict[str, Requests]) -> None:
    cold = found["cold"]
    print(
        "\n### A request that loads its version (lazy) and one that finds it loaded\n\n"
        "| request | n | p50 ms | p99 ms | max ms | statuses | wrong answers |"
        "\n|---|---|---|---|---|---|---|"
    )
    for kind, what in (
        ("cold", "first request to a never-loaded lazy version"),
        ("warm", "request to a loaded version"),
    ):
        requests = found[kind]
        p50, p99 = p50_p99_ms(requests.seconds)
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(requests.statuses.items()))
        print(
            f"| {what} | {len(requests.seconds)} | {p50:.2f} | {p99:.2f} "
            f"| {max(requests.seconds) * 1e3:.2f} | {statuses} | {requests.wrong} |"
        )
    mean = cold.load_s / cold.loads if cold.loads else 0.0
    print(
        f"\nLoads the server counted during the cold requests: {cold.loads:.0f}, "
        f"{mean * 1e3:.1f} ms each on average (read, verify, deserialise, warm up); "
        f"during the warm ones: {found['warm'].loads - cold.loads:.0f}."
    )


# --- 3. a budget a fraction of the weights ------------------------------------------------


@dataclass
class BudgetRun:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds of each 200."""
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    """Status and error code of each non-200 (``503 memory_budget_exceeded``...)."""
    transport_errors: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    rss: list[int] = field(default_factory=list)
    charged: list[float] = field(default_factory=list)
    rss_ready: int = 0
    alive: bool = True
    metrics: str = ""
    """``/metrics`` at the end."""


def budget_run(fleet: Fleet, budget: int, args: argparse.Namespace) -> BudgetRun:
    found = BudgetRun()
    label = f"lazy, budget 1/{args.overcommit:g} of the weights"
    with serving(fleet, "lazy", label, memory_budget_bytes=budget) as server:
        found.rss_ready = rss_bytes(server.pid) or 0
        asyncio.run(_traffic(fleet, server, args, found))
        found.alive = rss_bytes(server.pid) is not None
    return found


async def _traffic(
    fleet: Fleet, server: Server, args: argparse.Namespace, found: BudgetRun
) -> None:
    """``args.clients`` closed-loop clients for ``args.seconds``, and the sampler."""
    rng = np.random.default_rng(args.seed)
    ranks = np.arange(1, len(fleet.versions) + 1, dtype=np.float64) ** -args.zipf
    odds = ranks / ranks.sum()
    popular = list(rng.permutation(fleet.versions))  # NOTE: rank -> version, shuffled
    limits = httpx.Limits(max_connections=args.clients + 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        stop_at = time.perf_counter() + args.seconds

        async def one_client(seed: int) -> None:
            picks = np.random.default_rng([args.seed, seed])
            while time.perf_counter() < stop_at:
                version = str(popular[int(picks.choice(len(popular), p=odds))])
                started = time.perf_counter()
                try:
                    answer = await client.post(
                        f"/models/{MODEL}/versions/{version}/predict",
                        content=fleet.body,
                        headers=JSON,
                    )
                except httpx.TransportError as exc:
                    found.transport_errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.1)
                    continue
                found.statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    found.latencies.append(time.perf_counter() - started)
                    found.wrong += not fleet.correct(version, answer)
                else:
                    found.codes[_code(answer)] += 1

        async def sampler() -> None:
            while time.perf_counter() < stop_at:
                rss = rss_bytes(server.pid)
                if rss is None:
                    return  # NOTE: the server is gone; the clients say how
                found.rss.append(rss)
                text = (await client.get("/metrics")).text
                found.charged.append(metric(text, "registry_memory_charged_bytes"))
                await asyncio.sleep(SAMPLE_S)

        began = time.perf_counter()
        await asyncio.gather(sampler(), *(one_client(n) for n in range(args.clients)))
        found.seconds = time.perf_counter() - began
        found.metrics = (await client.get("/metrics")).text


def _code(answer: httpx.Response) -> str:
    try:
        return f"{answer.status_code} {answer.json()['error']['code']}"
    except (ValueError, KeyError, TypeError):
        return f"{answer.status_code} (no error code)"


def budget_table(found: BudgetRun, args: argparse.Namespace, weights: int) -> None:
    text = found.metrics
    budget = metric(text, "registry_memory_budget_bytes")
    answered = sum(found.statuses.values())
    unavailable = found.statuses[503]
    over = sum(c > budget for c in found.charged)
    p50, p99 = p50_p99_ms(found.latencies)
    refused = ", ".join(f"{code}: {n}" for code, n in sorted(found.codes.items())) or "none"
    ready = metric(text, "registry_version_state", state="ready")
    loads = metric(text, "registry_loads_total")
    rows = [
        ("memory budget (REGISTRY_MEMORY_BUDGET_BYTES)", _mib(budget)),
        ("parameters of all versions", f"{_mib(weights)} ({weights / budget:.2f}x the budget)"),
        (
            f"charged, max of the samples (every {SAMPLE_S:g} s)",
            _mib(max(found.charged, default=0)),
        ),
        ("samples with charged > budget", f"{over} of {len(found.charged)}"),
        ("charged at the end", _mib(metric(text, "registry_memory_charged_bytes"))),
        ("versions ready at the end", f"{ready:.0f}"),
        ("server RSS at ready (before any request)", _mib(found.rss_ready)),
        (
            "server RSS during the run, min / median / max",
            " / ".join(
                _mib(f(found.rss)) if found.rss else "-" for f in (min, statistics.median, max)
            ),
        ),
        ("evictions (registry_evictions_total)", f"{metric(text, 'registry_evictions_total'):.0f}"),
        (
            "loads: loaded / failed / refused (no room in the budget)",
            " / ".join(
                f"{metric(text, 'registry_loads_total', outcome=outcome):.0f}"
                for outcome in ("loaded", "failed", "refused")
            ),
        ),
        ("requests answered", f"{answered} ({answered / found.seconds:.0f}/s)"),
        ("loads per request answered", f"{loads / max(answered, 1):.2f}"),
        ("share of 503s", f"{unavailable / max(answered, 1):.2%} ({unavailable})"),
        ("non-200s by code", refused),
        ("transport errors", dict(found.transport_errors) or "none"),
        ("200s: p50 / p99 ms", f"{p50:.2f} / {p99:.2f}"),
        ("wrong answers", found.wrong),
        ("server still running at the end", "yes" if found.alive else "NO"),
    ]
    print(
        f"\n### {args.versions} lazy versions, weights {args.overcommit:g}x the budget: "
        f"{args.clients} clients, Zipf {args.zipf:g}, {found.seconds:.0f} s\n\n"
        "| | |\n|---|---|"
    )
    for name, value in rows:
        print(f"| {name} | {value} |")


def _mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def log_table(logs: dict[str, list[str]]) -> None:
    print("\n### Server warnings and errors\n")
    if not logs:
        print("none logged")
        return
    print("| server | lines | first, timestamp cut |\n|---|---|---|")
    for label, lines in logs.items():
        first = lines[0].split(" ", 2)[-1].replace("|", "\\|")
        print(f"| {label} | {len(lines)} | {first} |")
    for label, lines in logs.items():
        messages = list(dict.fromkeys(line.split(" ", 2)[-1] for line in lines))
        print(f"\n{label}: {len(messages)} distinct lines, the first {LOG_LINES} of them:")
        for line in messages[:LOG_LINES]:
            print(f"    {line}")


if __name__ == "__main__":
    main()
