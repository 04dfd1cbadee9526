"""Set-up for ``python -m bench.peers``: wrk, Java, one venv per peer, the models.

Idempotent: a venv is kept while its stamp names the same packages, the models while
their stamp names the same ``models.py``. torch goes in first, pinned, and stays pinned
(a constraint) while the peer is installed, so pip never swaps it for another build.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers import ENV_PACKAGES, PEER_ENV, ROOT

TORCH = "torch==2.13.0"
MAIN_PACKAGES = ("torch", "fastapi", "uvicorn", "litserve", "mlserver", "torchserve")


@dataclass
class Setup:
    """What the set-up found: the load tool, peers that cannot run and why, versions."""

    wrk: bool
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)


def venv_bin(cache: Path, env: str, exe: str) -> Path:
    return cache / "venvs" / env / "bin" / exe


def peer_env(cache: Path) -> dict[str, str]:
    """The environment every peer process and build step starts with."""
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        BENCH_PEERS_MODELS=str(cache / "models"),
    )


def _run(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    subprocess.run(command, check=True, cwd=cwd, env=env)


def ensure_venv(cache: Path, env: str, torch: str) -> dict[str, str]:
    """The venv of ``env`` (built if missing or stale); its main packages' versions."""
    folder = cache / "venvs" / env
    packages = ENV_PACKAGES[env]
    wanted = "\n".join([torch, "numpy", *packages]) + "\n"
    spec, ready = folder / ".spec", folder / ".ready"
    if not (ready.is_file() and spec.is_file() and spec.read_text() == wanted):
        shutil.rmtree(folder, ignore_errors=True)
        print(f"[setup] venv {env}: {torch}, then {' '.join(packages)}", flush=True)
        _run([sys.executable, "-m", "venv", str(folder)])
        pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        _run([*pip, "--upgrade", "pip", "wheel"])
        _run([*pip, torch, "numpy"])
        pin = folder / "torch-constraint.txt"
        pin.write_text(torch + "\n")
        _run([*pip, "-c", str(pin), *packages])
        frozen = subprocess.run(
            [str(folder / "bin" / "python"), "-m", "pip", "freeze"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        ready.write_text(frozen)
        spec.write_text(wanted)
    return _versions(ready.read_text())


def _versions(frozen: str) -> dict[str, str]:
    found = {}
    for line in frozen.splitlines():
        name, sep, version = line.partition("==")
        if sep and name.lower() in MAIN_PACKAGES:
            found[name.lower()] = version
    return found


def ensure_models(cache: Path) -> None:
    """Build the models with the naive venv's torch, again whenever models.py changes."""
    folder = cache / "models"
    source = (Path(__file__).parent / "models.py").read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    stamp = folder / ".built"
    if stamp.is_file() and stamp.read_text() == digest:
        return
    python = str(venv_bin(cache, "naive", "python"))
    _run([python, "-m", "bench.peers.models", "build", str(folder)], cwd=ROOT, env=peer_env(cache))
    stamp.write_text(digest)


def ensure_wrk(apt: bool) -> bool:
    """wrk on PATH; as root with apt-get, install Debian's package when missing."""
    if shutil.which("wrk"):
        return True
    if apt and os.geteuid() == 0 and shutil.which("apt-get"):
        print("[setup] wrk missing: apt-get install wrk", flush=True)
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            if subprocess.run(command, check=False).returncode != 0:
                break
        if shutil.which("wrk"):
            return True
    print(
        "[setup] no wrk: measuring with bench/load.py's asyncio client instead; it runs in "
        "this process on the same cores, so every figure is lower than wrk would give "
        "(install wrk, e.g. `apt-get install wrk`, for comparable figures)",
        flush=True,
    )
    return False


def java_major() -> int | None:
    """The major version of the ``java`` TorchServe would start ($JAVA_HOME, else PATH)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        return None
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_version(shown.stderr + shown.stdout)


def parse_java_version(text: str) -> int | None:
    """``openjdk version "17.0.15"`` -> 17; ``java version "1.8.0_392"`` -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def setup(cache: Path, peers: list[str], torch: str = TORCH, apt: bool = True) -> Setup:
    """Everything the peers need; a peer that cannot run is named in ``skipped``."""
    for sub in ("venvs", "models", "logs", "run"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    found = Setup(wrk=ensure_wrk(apt))
    if "torchserve" in peers:
        major = java_major()
        if major is None or major < 17:
            seen = "no java found" if major is None else f"java {major} found"
            found.skipped["torchserve"] = (
                f"TorchServe 0.12 needs a Java 17+ runtime ({seen}); install one, e.g. "
                "`apt-get install openjdk-17-jre-headless`, or set JAVA_HOME"
            )
            print(f"[setup] skipping torchserve: {found.skipped['torchserve']}", flush=True)
    # NOTE: the naive venv also builds the models and runs the in-process forward limit.
    wanted = {PEER_ENV[p] for p in peers if p in PEER_ENV and p not in found.skipped}
    envs = ["naive", *sorted(wanted - {"naive"})]
    for env in envs:
        found.versions[env] = ensure_venv(cache, env, torch)
    ensure_models(cache)
    return found
