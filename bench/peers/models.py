"""The two benchmark models, deterministic fp32 MLPs in eval mode.

    python -m bench.peers.models build DIR          # {tiny,medium}.{state,script}.pt + samples
    python -m bench.peers.models limit DIR [tiny,medium]   # in-process forward, JSON lines

``tiny`` (64-128-10) is HTTP-bound; ``medium`` (512-2048-2048-512) costs a millisecond or
two per single-sample forward on a small CPU, so batching matters. Every peer serves the
same weights: the state dict (eager peers and this project) or TorchScript (TorchServe).
``DIR/<name>.sample.json`` holds the one input every request carries and the in-process
output each server's first answer is checked against.

The peer servers import this module from their own environments (``BENCH_PEERS_MODELS``
names the folder), so it needs torch and the standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from bench import MODELS as SPECS

SEED = {"tiny": 1234, "medium": 5678}
SAMPLE_SEED = 42


class MLP(nn.Module):
    """Linear layers with ReLU between; the state dict loads into
    ``registry.examples.mlp.MLP`` too (same ``net.<i>`` keys)."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def models_dir() -> Path:
    return Path(os.environ["BENCH_PEERS_MODELS"])


def make(name: str) -> MLP:
    """A fresh model with deterministic weights, fp32, eval mode."""
    torch.manual_seed(SEED[name])
    return MLP(SPECS[name]).float().eval()


def sample_input(name: str) -> torch.Tensor:
    """The fixed one-sample input of every request, ``[1, in]``."""
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    return torch.randn(1, SPECS[name][0], generator=generator)


def load_state(name: str, folder: Path | None = None) -> MLP:
    model = MLP(SPECS[name])
    path = (folder or models_dir()) / f"{name}.state.pt"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.float().eval()


def load_script(name: str, folder: Path | None = None) -> torch.jit.ScriptModule:
    path = (folder or models_dir()) / f"{name}.script.pt"
    module: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")
    return module.eval()


def build(folder: Path, names: list[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or list(SPECS):
        model = make(name)
        torch.save(model.state_dict(), folder / f"{name}.state.pt")
        torch.jit.script(model).save(str(folder / f"{name}.script.pt"))
        x = sample_input(name)
        with torch.inference_mode():
            y = model(x)
        sample = {"inputs": x.tolist(), "outputs": y.tolist()}
        (folder / f"{name}.sample.json").write_text(json.dumps(sample))
        print(f"built {name}: {SPECS[name]} in {folder}")


def time_forward(
    name: str, batch: int, folder: Path, loader: str, seconds: float
) -> tuple[float, float]:
    """Milliseconds per forward and samples per second, torch's default threads."""
    model: nn.Module = load_script(name, folder) if loader == "script" else load_state(name, folder)
    x = torch.randn(batch, SPECS[name][0])
    with torch.inference_mode():
        for _ in range(20):
            model(x)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(x)
            count += 1
        elapsed = time.perf_counter() - started
    return elapsed / count * 1e3, count * batch / elapsed


def limit(folder: Path, names: list[str]) -> None:
    """The in-process forward limit as JSON lines, for the harness."""
    for name in names:
        for loader in ("state", "script"):
            for batch in (1, 8, 16, 32):
                ms, sps = time_forward(name, batch, folder, loader, seconds=1.5)
                line = {
                    "model": name,
                    "loader": loader,
                    "batch": batch,
                    "ms": ms,
                    "sps": sps,
                    "threads": torch.get_num_threads(),
                }
                print(json.dumps(line), flush=True)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("build", "limit"):
        raise SystemExit(__doc__)
    folder = Path(argv[1])
    names = argv[2].split(",") if len(argv) > 2 else list(SPECS)
    if argv[0] == "build":
        build(folder, names)
    else:
        limit(folder, names)


if __name__ == "__main__":
    main(sys.argv[1:])
