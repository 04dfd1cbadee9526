"""Tiny models, weight files and manifests for tests.

The architectures here are importable as ``tests.factories:Name``, so a test manifest can
name them like any user's ``architecture``.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from registry.weightfiles import file_sha256

FEATURES, CLASSES = 4, 3
TRIPWIRE = 13.0  # an input holding this value makes Tripwire raise
LIN_INPUT = [0.5, -1.0, 2.0, 0.25]


class Affine(nn.Module):
    """``Linear(features, classes)`` with weights fixed by ``seed``."""

    def __init__(self, features: int = FEATURES, classes: int = CLASSES, seed: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(classes, features, generator=generator))
            self.linear.bias.copy_(torch.randn(classes, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out


class Tripwire(nn.Module):
    """Echoes its input, but raises when any input equals ``TRIPWIRE``: a model bug."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == TRIPWIRE).any()):
            raise RuntimeError("tripwire hit")
        return x * 1


class Sleepy(nn.Module):
    """Echoes its input after ``seconds``: a slow forward pass."""

    def __init__(self, seconds: float = 0.5) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x * 1


class SlowToBuild(nn.Module):
    """Takes ``seconds`` to construct: a model that is slow to load."""

    def __init__(self, seconds: float = 1.0) -> None:
        super().__init__()
        time.sleep(seconds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1


_BARRIERS: dict[str, threading.Barrier] = {}
_BARRIERS_LOCK = threading.Lock()


class Rendezvous(nn.Module):
    """Builds only once ``parties`` versions naming the same ``group`` are being built at
    the same moment: loads that run one after another fail (the barrier times out)."""

    def __init__(self, group: str, parties: int = 2, timeout_s: float = 20.0) -> None:
        super().__init__()
        with _BARRIERS_LOCK:
            barrier = _BARRIERS.setdefault(group, threading.Barrier(parties))
        barrier.wait(timeout=timeout_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1


def compute(seconds: float) -> None:
    """Keep this thread computing for ``seconds`` of its CPU time, as a model's pass does:
    passes run on several threads only once those on one have computed long
    (``registry.threads.PassWidth``), and a pass that sleeps computes nothing."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


class MeetsItsTwin(nn.Module):
    """Echoes its input once two passes of ``group`` run at the same moment, and records
    the torch threads each pass had (``threads[group]``, in the order they began; each
    beginning sets ``began[group]``). Each computes a millisecond first."""

    threads: ClassVar[dict[str, list[int]]] = {}
    began: ClassVar[dict[str, threading.Event]] = {}

    def __init__(self, group: str) -> None:
        super().__init__()
        self.group = group
        with _BARRIERS_LOCK:
            self.barrier = _BARRIERS.setdefault(group, threading.Barrier(2, timeout=10))
            self.threads.setdefault(group, [])
            self.began.setdefault(group, threading.Event())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _BARRIERS_LOCK:
            self.threads[self.group].append(torch.get_num_threads())
        self.began[self.group].set()
        compute(0.001)
        self.barrier.wait()
        return x * 1


class RecordsThreads(nn.Module):
    """Echoes its input, recording the torch threads of the thread that built it and of
    each thread that ran a pass (``threads[group]``: ``("build", n)``, ``("pass", n)``).
    Each pass computes a millisecond: long enough for the next to run on several threads."""

    threads: ClassVar[dict[str, list[tuple[str, int]]]] = {}

    def __init__(self, group: str) -> None:
        super().__init__()
        self.group = group
        with _BARRIERS_LOCK:
            self.threads.setdefault(group, []).append(("build", torch.get_num_threads()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _BARRIERS_LOCK:
            self.threads[self.group].append(("pass", torch.get_num_threads()))
        compute(0.001)
        return x * 1


class ReportsThreads(nn.Module):
    """Answers each row with the torch threads its pass ran on: what a server's
    inference threads use, seen from outside the process. Each pass computes a
    millisecond: too long ever to run inline on the event loop, and long enough for
    later ones to run on several threads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute(0.001)
        return torch.full((x.shape[0], 1), float(torch.get_num_threads()))


class CountsBuilds(nn.Module):
    """Records how many versions of ``group`` were being built at once, at most."""

    building: ClassVar[dict[str, list[int]]] = {}  # group -> [now, most]

    def __init__(self, group: str, seconds: float = 0.05) -> None:
        super().__init__()
        with _BARRIERS_LOCK:
            counts = self.building.setdefault(group, [0, 0])
            counts[0] += 1
            counts[1] = max(counts)
        time.sleep(seconds)
        with _BARRIERS_LOCK:
            counts[0] -= 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1


class BuildsWhenReleased(nn.Module):
    """Counts its builds in ``started[group]``, says so through ``began(group)``, then
    waits for ``released(group)``: a load under way for as long as a test wants."""

    started: ClassVar[dict[str, int]] = {}
    _events: ClassVar[dict[tuple[str, str], threading.Event]] = {}

    def __init__(self, group: str) -> None:
        super().__init__()
        with _BARRIERS_LOCK:
            self.started[group] = self.started.get(group, 0) + 1
        self.began(group).set()
        self.released(group).wait(30)

    @classmethod
    def began(cls, group: str) -> threading.Event:
        return cls._event(group, "began")

    @classmethod
    def released(cls, group: str) -> threading.Event:
        return cls._event(group, "released")

    @classmethod
    def _event(cls, group: str, what: str) -> threading.Event:
        with _BARRIERS_LOCK:
            return cls._events.setdefault((group, what), threading.Event())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1


class FailsToBuild(nn.Module):
    """Counts its attempts in ``attempts[group]``, then raises: a version that cannot load."""

    attempts: ClassVar[dict[str, int]] = {}

    def __init__(self, group: str) -> None:
        super().__init__()
        with _BARRIERS_LOCK:
            self.attempts[group] = self.attempts.get(group, 0) + 1
        raise RuntimeError("this version cannot be built")


class ComplexOut(nn.Module):
    """Answers in complex numbers, which no protocol here can encode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.complex64)


class NoBatchAxis(nn.Module):
    """Returns a scalar: refused at warm-up because batching needs a batch axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum()


def affine_outputs(inputs: object, seed: int) -> np.ndarray:
    """What ``Affine(seed)`` answers for ``inputs`` (array or nested lists), in-process."""
    with torch.inference_mode():
        out: torch.Tensor = Affine(seed=seed)(torch.as_tensor(np.asarray(inputs, np.float32)))
    return out.numpy()


def build_affine(seed: int = 0) -> Affine:
    """A factory function: callable from a manifest only when the settings allow it."""
    return Affine(seed=seed)


class NeedsFile(nn.Module):
    """Reads a file when built: its error message carries the file's full path."""

    def __init__(self, file: str) -> None:
        super().__init__()
        Path(file).read_bytes()


def write_torchscript(root: Path, relative: str, module: nn.Module) -> str:
    path = _prepare(root, relative)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return file_sha256(path)


def write_exported(root: Path, relative: str, module: nn.Module, features: int = FEATURES) -> str:
    path = _prepare(root, relative)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        module.eval(), (torch.zeros(2, features),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, path)
    return file_sha256(path)


def write_state_dict(root: Path, relative: str, module: nn.Module) -> str:
    path = _prepare(root, relative)
    if path.suffix == ".safetensors":
        save_file(module.state_dict(), str(path))
    else:
        torch.save(module.state_dict(), path)
    return file_sha256(path)


def _prepare(root: Path, relative: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def state_dict_version(
    version: str, path: str, architecture: str, sha256: str | None = None, **args: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "version": version,
        "format": "state_dict",
        "path": path,
        "architecture": f"tests.factories:{architecture}",
    }
    if args:
        entry["architecture_args"] = args
    if sha256:
        entry["sha256"] = sha256
    return entry


def model_entry(
    name: str,
    versions: Iterable[Mapping[str, Any]],
    shape: Iterable[int] = (FEATURES,),
    **extra: Any,
) -> dict[str, Any]:
    return {"name": name, "input": {"shape": list(shape)}, "versions": list(versions), **extra}


def affine_model(
    weights: Path, name: str = "lin", versions: Iterable[str] = ("1", "2"), **extra: Any
) -> dict[str, Any]:
    """A classifier whose version N is ``Affine(seed=N)`` in safetensors."""
    entries = []
    for version in versions:
        path = f"{name}/{version}/model.safetensors"
        digest = write_state_dict(weights, path, Affine(seed=int(version)))
        entries.append(state_dict_version(version, path, "Affine", digest, seed=int(version)))
    return model_entry(name, entries, **extra)


def echo_model(weights: Path, name: str, architecture: str, **args: Any) -> dict[str, Any]:
    """A parameter-free model (Tripwire, Sleepy, SlowToBuild...) with an empty state dict."""
    path = f"{name}/1/model.pt"
    write_state_dict(weights, path, nn.Module())
    return model_entry(name, [state_dict_version("1", path, architecture, **args)])


def parameterless_version(
    weights: Path, name: str, architecture: str, **extra: Any
) -> dict[str, Any]:
    """Version 1 of ``name``: ``architecture`` (``module:Name``, parameter-free) over an
    empty state dict, with ``extra`` keys (``architecture_args``, ``handler``...)."""
    path = f"{name}/1/model.pt"
    write_state_dict(weights, path, nn.Module())
    entry = {"version": "1", "format": "state_dict", "path": path}
    return entry | {"architecture": architecture} | extra


def write_manifest(directory: Path, models: Iterable[Mapping[str, Any]]) -> Path:
    path = directory / "models.yaml"
    path.write_text(yaml.safe_dump({"models": list(models)}, sort_keys=False), encoding="utf-8")
    return path


def lin_routes(version: str) -> list[tuple[str, bytes]]:
    """``lin``'s four prediction routes (native and V2, default and ``version``), each with
    a valid one-instance body."""
    native = orjson.dumps({"inputs": LIN_INPUT})
    v2 = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [FEATURES], "datatype": "FP32", "data": LIN_INPUT}]}
    )
    return [
        ("/models/lin/predict", native),
        (f"/models/lin/versions/{version}/predict", native),
        ("/v2/models/lin/infer", v2),
        (f"/v2/models/lin/versions/{version}/infer", v2),
    ]
