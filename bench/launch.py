"""Start one server for ``make bench`` and stop it afterwards, whatever it is.

Shared by the MLP section (this project, the tutorial app) and the minilm section (this
project, LitServe) so every server is started, awaited and stopped the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import httpx

READY_S = 180.0
ROOT = Path(__file__).resolve().parents[1]


def registry_serve(
    manifest: Path, port: int, *options: str, root: Path = ROOT
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that serve ``manifest`` with the project checked out at
    ``root`` (this one unless another checkout is compared): none of the caller's
    ``REGISTRY_*`` settings, and that checkout importable whatever the cwd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    serve = ["-m", "registry", "serve", "--manifest", str(manifest), "--port", str(port)]
    return [sys.executable, *serve, *options], env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def launch(
    name: str, command: list[str], env: dict[str, str], cwd: Path, log: Path, ready: str
) -> Iterator[int]:
    """Run ``command`` in a process group of its own until ``GET ready`` answers 200;
    yields the group's id (the leader's pid) so callers can count the group's CPU.

    A process group because LitServe (and uvicorn with workers) start children: SIGTERM
    to the group, then SIGKILL, so no server outlives its cells and takes cores from the
    next one. The same when the bench itself is sent SIGTERM (``timeout``, CI, ``kill``)
    while the server runs.
    """
    with log.open("wb") as out, _exit_on_sigterm():
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=out, start_new_session=True
        )
        try:
            deadline = time.monotonic() + READY_S
            while not is_ready(ready):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start:\n{log.read_text()}")
                time.sleep(0.2)
            yield process.pid
        finally:
            _stop(process)


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises ``SystemExit`` for as long as this lasts, so that the ``finally``
    blocks around it run: by default it ends Python at once, leaving the servers behind,
    and whatever else the caller set up (``bench.compare``'s ``git worktree``)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # NOTE: only the main thread may set handlers, and only it receives signals
        return
    previous = signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    """A signal handler that raises ``SystemExit``, so that ``finally`` blocks stop what
    the bench started."""
    raise SystemExit(f"stopped by signal {signum}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # NOTE: the leader may exit before its children (LitServe's workers): wait for
        # the group to empty, else SIGKILL what is left.
        if not _group_alive(process.pid, grace):
            break


def _group_alive(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def is_ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
