"""``make bench-peers`` (``python -m bench.peers``): this project beside its peers.

The same two MLPs are served by a naive FastAPI app, LitServe, MLServer, TorchServe, this
project and a bare ASGI app (the HTTP limit), each from a virtual environment of its own
in a cache folder, and driven over loopback with wrk. See docs/benchmarks.md.

Standard library only: the peer servers under ``servers/`` import this package from their
own environments, which hold torch and the peer, never this project's dependencies.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVERS = Path(__file__).resolve().parent / "servers"

# Every peer, in the report's order; ``registry`` is this project.
PEERS = [
    "naive",
    "naive-async",
    "litserve",
    "litserve-nobatch",
    "mlserver-pw0",
    "mlserver-pw1",
    "torchserve",
    "registry",
    "limit",
]

# peer -> the virtual environment it runs in (``registry`` runs in the project's own).
PEER_ENV = {
    "naive": "naive",
    "naive-async": "naive",
    "limit": "naive",
    "litserve": "litserve",
    "litserve-nobatch": "litserve",
    "mlserver-pw0": "mlserver",
    "mlserver-pw1": "mlserver",
    "torchserve": "torchserve",
}

# environment -> what pip installs after torch. The pins are the versions the published
# table was measured with; the extras are install fixes (see docs/benchmarks.md).
ENV_PACKAGES = {
    "naive": ["fastapi", "uvicorn[standard]"],
    # NOTE: tokenizers and safetensors for the minilm comparison of `make bench`
    # (servers/litserve_minilm.py), pinned to the versions this project's .venv holds.
    "litserve": ["litserve==0.2.19", "tokenizers==0.23.3", "safetensors==0.8.0"],
    # NOTE: with uvloop 0.22+ every MLServer 1.7.1 parallel worker dies at start
    # (asyncio.get_event_loop(): "There is no current event loop").
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22"],
    # NOTE: TorchServe's backend worker imports yaml without declaring PyYAML.
    "torchserve": ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml"],
}

# Rows a batching peer puts in one forward pass, and how long it waits for them.
MAX_BATCH = 16
BATCH_MS = 2.0


def cache_dir() -> Path:
    """Venvs, models, logs: ``$BENCH_PEERS_CACHE``, else ``~/.cache/registry-bench-peers``."""
    configured = os.environ.get("BENCH_PEERS_CACHE")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path.home() / ".cache" / "registry-bench-peers"
