"""The measurement: for every round, model and peer, start the peer's server on loopback,
wait until it answers, check ONE answer against the in-process output (max abs diff
<= 1e-4, else the peer is recorded as failed), warm up at 8 connections, measure each
concurrency with ``bench.load`` (wrk, or its asyncio client without wrk), then stop the
server (SIGTERM, then SIGKILL, to the process group started for it).

Peer order is reversed on odd rounds so drift spreads over the peers. Each measurement is
one JSON line: req/s, p50 and p99, non-2xx and socket errors, and the CPU seconds of the
server's process group, of the load generator and of everything else on the machine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import MODELS, load
from bench.peers import ROOT, SERVERS
from bench.peers.install import peer_env, venv_bin

TOLERANCE = 1e-4
QUIET_WAIT_S = 90  # --quiet: longest wait for foreign CPU load to drop before a run
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Emit = Callable[[dict[str, Any]], None]
Extract = Callable[[Any], list[float]]


@dataclass(frozen=True)
class Options:
    """What the command line sets (see ``python -m bench.peers --help``)."""

    cache: Path
    models: list[str]
    concurrencies: list[int]
    rounds: int = 2
    duration: float = 10.0
    warmup: float = 3.0
    quiet: float = 0.0
    max_batch: int = 16
    batch_ms: float = 2.0
    registry_python: str = "python3"
    registry_root: Path = ROOT


@dataclass
class Spec:
    """How to start one peer for one model and how to talk to it."""

    command: list[str]
    cwd: Path
    env: dict[str, str]
    path: str
    body: bytes
    extract: Extract | None
    ready_s: float = 60.0
    ports: list[int] = field(default_factory=list)


# ---- request bodies and answers ---------------------------------------------------------


def flat(x: Any) -> list[float]:
    if isinstance(x, list):
        return [v for item in x for v in flat(item)]
    return [float(x)]


def sample(opts: Options, model: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((opts.cache / "models" / f"{model}.sample.json").read_text())
    return found


def body_plain(x: list[list[float]]) -> bytes:
    return json.dumps({"inputs": x}).encode()


def body_v2(x: list[list[float]]) -> bytes:
    tensor = {"name": "x", "shape": [len(x), len(x[0])], "datatype": "FP32", "data": flat(x)}
    return json.dumps({"inputs": [tensor]}).encode()


def out_plain(answer: Any) -> list[float]:
    return flat(answer["outputs"])


def out_v2(answer: Any) -> list[float]:
    return flat(answer["outputs"][0]["data"])


# ---- the peers ----------------------------------------------------------------------------


def registry_manifest(models: list[str], max_batch: int) -> str:
    """This project's manifest for the bench models: the same state dicts the eager peers
    serve (weights resolve under ``REGISTRY_WEIGHTS_DIR``), adaptive batching."""
    lines = ["models:"]
    for name in models:
        widths = MODELS[name]
        lines += [
            f"  - name: {name}",
            f"    input: {{shape: [{widths[0]}], dtype: float32}}",
            f"    batching: {{max_batch_size: {max_batch}}}",
            "    versions:",
            '      - version: "1"',
            "        format: state_dict",
            f"        path: {name}.state.pt",
            "        architecture: registry.examples.mlp:MLP",
            f"        architecture_args: {{widths: {widths}}}",
        ]
    return "\n".join(lines) + "\n"


def _uvicorn(opts: Options, app: str, port: int) -> list[str]:
    return [
        str(venv_bin(opts.cache, "naive", "python")),
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def prep_mlserver(opts: Options, model: str, port: int, workers: int) -> Path:
    folder = _fresh(opts.cache / "run" / f"mlserver-pw{workers}-{model}")
    (folder / model).mkdir()
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": port + 1,
        "metrics_port": port + 2,
        "metrics_endpoint": None,
        "parallel_workers": workers,
        "load_models_at_startup": True,
    }
    model_settings = {
        "name": model,
        "implementation": "bench.peers.servers.mlserver_runtime.TorchMLP",
        "max_batch_size": opts.max_batch,
        "max_batch_time": opts.batch_ms / 1000.0,
        "parameters": {"extra": {"bench_model": model}},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=1))
    (folder / model / "model-settings.json").write_text(json.dumps(model_settings, indent=1))
    return folder


def prep_torchserve(opts: Options, model: str, port: int) -> Path:
    folder = _fresh(opts.cache / "run" / f"torchserve-{model}")
    store = folder / "model-store"
    store.mkdir()
    subprocess.run(
        [
            str(venv_bin(opts.cache, "torchserve", "torch-model-archiver")),
            "--model-name",
            model,
            "--version",
            "1.0",
            "--serialized-file",
            str(opts.cache / "models" / f"{model}.script.pt"),
            "--handler",
            str(SERVERS / "torchserve_handler.py"),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
    )
    version = {
        "defaultVersion": True,
        "marName": f"{model}.mar",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": opts.max_batch,
        "maxBatchDelay": int(opts.batch_ms),
        "responseTimeout": 120,
    }
    config = [
        f"inference_address=http://127.0.0.1:{port}",
        f"management_address=http://127.0.0.1:{port + 1}",
        f"metrics_address=http://127.0.0.1:{port + 2}",
        f"model_store={store}",
        f"load_models={model}.mar",
        "default_workers_per_model=1",
        "disable_system_metrics=true",
        "install_py_dep_per_model=false",
        "enable_envvars_config=false",
        "models=" + json.dumps({model: {"1.0": version}}),
    ]
    (folder / "config.properties").write_text("\n".join(config) + "\n")
    return folder


def peer_spec(peer: str, model: str, port: int, opts: Options) -> Spec:
    env = peer_env(opts.cache) | {"BENCH_MODEL": model}
    inputs = sample(opts, model)["inputs"]
    spec = Spec([], ROOT, env, "/predict", body_plain(inputs), out_plain, ports=[port])
    if peer in ("naive", "naive-async"):
        if peer == "naive-async":
            env["BENCH_ASYNC"] = "1"
        spec.command = _uvicorn(opts, "bench.peers.servers.naive_app:app", port)
    elif peer == "limit":  # the HTTP ceiling: same bodies, a fixed answer
        spec.command = _uvicorn(opts, "bench.peers.servers.bare_asgi:app", port)
        spec.extract = None
    elif peer in ("litserve", "litserve-nobatch"):
        batch, wait = (opts.max_batch, opts.batch_ms / 1000) if peer == "litserve" else (1, 0.0)
        python = str(venv_bin(opts.cache, "litserve", "python"))
        module = "bench.peers.servers.litserve_app"
        spec.command = [python, "-m", module, model, str(port), str(batch), str(wait)]
    elif peer in ("mlserver-pw0", "mlserver-pw1"):
        folder = prep_mlserver(opts, model, port, int(peer[-1]))
        spec.command = [str(venv_bin(opts.cache, "mlserver", "mlserver")), "start", str(folder)]
        spec.cwd, spec.path, spec.ready_s = folder, f"/v2/models/{model}/infer", 120
        spec.body, spec.extract, spec.ports = body_v2(inputs), out_v2, [port, port + 1, port + 2]
    elif peer == "torchserve":
        folder = prep_torchserve(opts, model, port)
        env["LOG_LOCATION"] = env["METRICS_LOCATION"] = str(folder / "logs")
        # NOTE: the frontend unpacks the archive under $TEMP/models (default /tmp/models).
        (folder / "tmp").mkdir()
        env["TEMP"] = str(folder / "tmp")
        # NOTE: the frontend starts its Python backend worker with the `python` on PATH.
        env["PATH"] = (
            f"{venv_bin(opts.cache, 'torchserve', 'python').parent}{os.pathsep}{env['PATH']}"
        )
        spec.command = [
            str(venv_bin(opts.cache, "torchserve", "torchserve")),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(folder / "model-store"),
            "--ts-config",
            str(folder / "config.properties"),
        ]
        spec.cwd, spec.path, spec.ready_s = folder, f"/predictions/{model}", 180
        spec.ports = [port, port + 1, port + 2]
    elif peer == "registry":
        folder = _fresh(opts.cache / "run" / "registry")
        manifest = folder / "models.yaml"
        manifest.write_text(registry_manifest([model], opts.max_batch))
        # NOTE: none of the caller's REGISTRY_* settings, and a cwd without a stray .env.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["REGISTRY_WEIGHTS_DIR"] = str(opts.cache / "models")
        # NOTE: this checkout's (or --registry-root's) code, whatever .venv was installed from.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(opts.registry_root), env.get("PYTHONPATH")) if p
        )
        spec.env, spec.cwd, spec.ready_s = env, folder, 120
        spec.command = [
            opts.registry_python,
            "-m",
            "registry",
            "serve",
            "--manifest",
            str(manifest),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        spec.path = f"/models/{model}/predict"
    else:
        raise SystemExit(f"unknown peer {peer!r}")
    return spec


# ---- processes and CPU ----------------------------------------------------------------------


def group_procs(pgid: int) -> list[tuple[int, int]]:
    """``[(pid, cpu ticks)]`` of the live processes in process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid:
            found.append((int(entry), int(fields[11]) + int(fields[12])))
    return found


def group_cpu_s(pgid: int) -> float:
    return sum(ticks for _, ticks in group_procs(pgid)) / CLOCK_TICKS


def busy_cpu_s() -> float:
    """Machine-wide busy CPU seconds, all cores (``/proc/stat``)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLOCK_TICKS


def own_cpu_s() -> float:
    """This process and its waited-for children (wrk): the load generator's CPU."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def other_cores(pgid: int, seconds: float = 1.0) -> float:
    """Cores used by anything but the server group and this process over ``seconds``."""
    server, busy, own = group_cpu_s(pgid), busy_cpu_s(), own_cpu_s()
    time.sleep(seconds)
    used = (busy_cpu_s() - busy) - (group_cpu_s(pgid) - server) - (own_cpu_s() - own)
    return used / seconds


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def free_ports(count: int) -> int:
    """A port whose ``count - 1`` successors are free too (MLServer and TorchServe open 3)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base: int = sock.getsockname()[1]
        if base + count < 65536 and all(port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free loopback ports")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group started for the server (pgid == pid), then SIGKILL."""
    if proc.poll() is None or group_procs(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def post(port: int, path: str, body: bytes, timeout: float = 10) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def wait_and_check(
    proc: subprocess.Popen[bytes], spec: Spec, port: int, want: list[float]
) -> tuple[float, float | None]:
    """Poll until the server answers 200, then compare that answer with torch in-process.
    Returns the seconds it took to answer and the largest difference."""
    started = time.monotonic()
    last = "no answer"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited rc={proc.returncode}")
        if time.monotonic() - started > spec.ready_s:
            raise RuntimeError(f"not ready after {spec.ready_s:.0f}s: {last}")
        try:
            status, raw = post(port, spec.path, spec.body)
            if status == 200:
                break
            last = f"status {status}: {raw[:200]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.5)
    ready_s = time.monotonic() - started
    if spec.extract is None:
        return ready_s, None
    got = spec.extract(json.loads(raw))
    if len(got) != len(want):
        raise RuntimeError(f"wrong output length {len(got)} != {len(want)}")
    diff = max(abs(a - b) for a, b in zip(got, want, strict=True))
    if diff > TOLERANCE:
        raise RuntimeError(f"wrong prediction: max abs diff {diff}")
    return ready_s, diff


# ---- measuring ----------------------------------------------------------------------------


def measure(url: str, body: bytes, conc: int, seconds: float, pgid: int) -> dict[str, Any]:
    return measure_call(lambda: load.run(url, body, conc, seconds), pgid)


def measure_call(call: Callable[[], load.Result], pgid: int) -> dict[str, Any]:
    """``call``'s load figures, with the CPU seconds the server group, this process (and
    the wrk it waited for) and everything else used while it ran."""
    server, busy, own = group_cpu_s(pgid), busy_cpu_s(), own_cpu_s()
    result = call()
    server_s, busy_s, own_s = (
        group_cpu_s(pgid) - server,
        busy_cpu_s() - busy,
        own_cpu_s() - own,
    )
    return result.as_dict() | {
        "rps": result.rps,
        "wall_s": result.seconds,
        "server_cpu_s": server_s,
        "load_cpu_s": own_s,
        "other_cpu_s": busy_s - server_s - own_s,
    }


CPU_KEYS = ("server_cpu_s", "load_cpu_s", "other_cpu_s")


def cores(measured: dict[str, Any]) -> dict[str, float]:
    """``measure``'s CPU seconds as cores busy over its wall time (``server_cores``...)."""
    wall = max(float(measured["wall_s"]), 1e-9)
    return {f"{k[:-6]}_cores": round(float(measured[k]) / wall, 2) for k in CPU_KEYS}


def measure_quiet(
    url: str, body: bytes, conc: int, seconds: float, pgid: int, quiet: float
) -> dict[str, Any]:
    """``measure``; with ``quiet`` > 0 (cores), first wait (at most QUIET_WAIT_S) until
    foreign load is below it, and redo a disturbed run at most twice; keeps the least
    disturbed attempt."""
    if quiet <= 0:
        return measure(url, body, conc, seconds, pgid)
    best: dict[str, Any] | None = None
    for attempt in range(3):
        deadline = time.monotonic() + QUIET_WAIT_S
        while time.monotonic() < deadline and other_cores(pgid) > quiet:
            pass
        result = measure(url, body, conc, seconds, pgid) | {"attempt": attempt}
        if best is None or result["other_cpu_s"] < best["other_cpu_s"]:
            best = result
        foreign = result["other_cpu_s"] / max(result["wall_s"], 1e-9)
        if foreign <= quiet:
            break
        print(f"    c={conc}: foreign CPU {foreign:.2f} cores > {quiet}, again", flush=True)
    assert best is not None  # noqa: S101 -- the loop ran at least once
    return best


def bench_peer(peer: str, model: str, rnd: int, opts: Options, emit: Emit) -> None:
    """One peer serving one model: start, check, warm up, measure, stop. A failure is
    recorded and the run goes on with the next peer."""
    port = free_ports(3)
    log_path = opts.cache / "logs" / f"{peer}-{model}-r{rnd}.log"
    proc: subprocess.Popen[bytes] | None = None
    spec: Spec | None = None
    with log_path.open("wb") as log:
        try:
            spec = peer_spec(peer, model, port, opts)
            url = f"http://127.0.0.1:{port}{spec.path}"
            proc = subprocess.Popen(
                spec.command,
                cwd=spec.cwd,
                env=spec.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            want = flat(sample(opts, model)["outputs"])
            ready_s, diff = wait_and_check(proc, spec, port, want)
            print(f"  {peer}/{model}: answered in {ready_s:.1f}s, check diff={diff}", flush=True)
            load.run(url, spec.body, 8, opts.warmup)  # warm-up, discarded
            for conc in opts.concurrencies:
                r = measure_quiet(url, spec.body, conc, opts.duration, proc.pid, opts.quiet)
                r |= {"kind": "http", "peer": peer, "model": model, "conc": conc, "round": rnd}
                r["check_diff"] = diff
                emit(r)
                wall = max(r["wall_s"], 1e-9)
                print(
                    f"    c={conc:<3} {r['rps']:9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  non-2xx {r['non2xx']}  errors {r['errors']}  "
                    f"server {r['server_cpu_s'] / wall:.2f} load {r['load_cpu_s'] / wall:.2f} "
                    f"other {r['other_cpu_s'] / wall:.2f} cores",
                    flush=True,
                )
        except Exception as exc:  # recorded; the next peer still runs
            print(f"  {peer}/{model}: FAILED: {exc} (log: {log_path})", flush=True)
            emit({"kind": "error", "peer": peer, "model": model, "round": rnd, "error": str(exc)})
        finally:
            if proc is not None:
                stop(proc)
            deadline = time.monotonic() + 10
            ports = spec.ports if spec else [port]
            while time.monotonic() < deadline and not all(port_free(p) for p in ports):
                time.sleep(0.2)


def limit_forward(rnd: int, opts: Options, emit: Emit) -> None:
    """The in-process forward limit (naive venv), with the foreign CPU during it."""
    if opts.quiet > 0:
        deadline = time.monotonic() + QUIET_WAIT_S
        while time.monotonic() < deadline and other_cores(-1) > opts.quiet:
            pass
    busy, own, started = busy_cpu_s(), own_cpu_s(), time.monotonic()
    python = str(venv_bin(opts.cache, "naive", "python"))
    command = [python, "-m", "bench.peers.models", "limit", str(opts.cache / "models")]
    shown = subprocess.run(
        [*command, ",".join(opts.models)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=peer_env(opts.cache),
    ).stdout
    other = ((busy_cpu_s() - busy) - (own_cpu_s() - own)) / (time.monotonic() - started)
    print(f"  limit-forward: foreign CPU {other:.2f} cores", flush=True)
    for line in shown.splitlines():
        r = json.loads(line) | {"kind": "forward", "peer": "limit-forward", "round": rnd}
        r["other_cores"] = other
        emit(r)
        print(
            f"  limit-forward {r['model']} {r['loader']} batch={r['batch']:<2} "
            f"threads={r['threads']}: {r['sps']:.0f} samples/s ({r['ms']:.3f} ms)",
            flush=True,
        )


def run(peers: list[str], opts: Options, emit: Emit) -> None:
    for rnd in range(opts.rounds):
        order = list(peers) if rnd % 2 == 0 else list(reversed(peers))
        print(f"== round {rnd}: {' '.join(order)}", flush=True)
        if "limit" in order:
            limit_forward(rnd, opts, emit)
        for model in opts.models:
            for peer in order:
                bench_peer(peer, model, rnd, opts, emit)
