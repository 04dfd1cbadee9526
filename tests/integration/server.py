"""Run ``python -m registry serve`` as a real process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPOSITORY = Path(__file__).resolve().parents[2]


def rss_bytes(pid: int) -> int | None:
    """A process's resident set size from ``/proc`` (Linux); None elsewhere or once it is
    gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        # NOTE: one client for every look: a new one loads the CA bundle each time, which
        # cost seconds of CPU that the starting server needed.
        with httpx.Client(timeout=1) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited {self.process.returncode}:\n{self.output()}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start(log_dir: Path, args: Sequence[str] = (), env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = log_dir / f"server-{port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    environment |= {"REGISTRY_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            cwd=REPOSITORY,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Server(process, f"http://127.0.0.1:{port}", log)


@contextmanager
def serving(
    log_dir: Path, args: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[Server]:
    server = start(log_dir, args, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def samples(client: httpx.Client, family: str, model: str) -> dict[str, float]:
    """One model's samples of a metric family, by their ``status`` label (or ``""``)."""
    found: dict[str, float] = {}
    for metrics in text_string_to_metric_families(client.get("/metrics").text):
        if metrics.name != family:
            continue
        for sample in metrics.samples:
            if sample.labels.get("model") == model and not sample.name.endswith("_created"):
                key = sample.labels.get("status", "")
                found[key] = found.get(key, 0.0) + sample.value
    return found


def in_flight(client: httpx.Client, model: str) -> float:
    return samples(client, "registry_in_flight_requests", model).get("", 0.0)
