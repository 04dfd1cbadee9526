"""From a manifest entry to a ``LoadedModel``: find, verify, load, warm up.

Security lives here: weight paths are confined to the weights root (symlinks included),
checksums are verified before a byte is deserialised, and nothing is unpickled except
through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn
from torch.export.passes import move_to_device_pass

from registry.codec import NUMPY_DTYPES
from registry.errors import (
    ChecksumMismatch,
    ModelLoadFailed,
    RegistryError,
    WeightsNotFound,
    WeightsOutsideRoot,
)
from registry.manifest import ModelSpec, VersionSpec
from registry.model import LoadedModel

WARMUP_BATCH = 2  # NOTE: two rows prove the batch axis is dynamic, which batching needs.


def resolve_weights(root: Path, version: VersionSpec) -> Path:
    """The weight file's real path, refusing any that resolves outside ``root``."""
    root = root.resolve()
    path = (root / version.path).resolve()
    if not path.is_relative_to(root):
        raise WeightsOutsideRoot(
            f"{str(version.path)!r} resolves outside the weights root", path=str(version.path)
        )
    if not path.is_file():
        raise WeightsNotFound(f"no weight file {str(version.path)!r}", path=str(version.path))
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class WeightDigests:
    """sha256 of weight files, hashed again only when a file's size, mtime or inode changes.

    Reloads fingerprint every weight file; without this a manifest of large models would
    be re-hashed on every poll.
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self._lock = threading.Lock()

    def digest(self, path: Path) -> str:
        status = path.stat()
        stamp = (status.st_size, status.st_mtime_ns, status.st_ino)
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        digest = file_sha256(path)
        with self._lock:
            self._known[path] = (stamp, digest)
        return digest


def verify_weights(root: Path, version: VersionSpec, digests: WeightDigests | None = None) -> Path:
    """Resolve the weight file and check its declared sha256; returns the path."""
    path = resolve_weights(root, version)
    if version.sha256 is None:
        return path
    actual = digests.digest(path) if digests else file_sha256(path)
    if actual != version.sha256:
        raise ChecksumMismatch(
            f"sha256 of {str(version.path)!r} is {actual}, the manifest says {version.sha256}",
            path=str(version.path),
        )
    return path


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadFailed(f"device {requested!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadFailed(f"device {requested!r} does not exist")
    return device


def import_architecture(reference: str) -> Callable[..., object]:
    """``package.module:factory`` → the factory; the manifest is trusted operator config."""
    module_name, _, attribute = reference.partition(":")
    factory: object = getattr(importlib.import_module(module_name), attribute)
    if not callable(factory):
        raise TypeError(f"{reference} is not callable")
    return factory


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise TypeError(f"{path.name} does not hold a flat state dict of tensors")
    return state


def _load_torchscript(path: Path, _: VersionSpec, device: torch.device) -> nn.Module:
    with warnings.catch_warnings():
        # NOTE: TorchScript is deprecated upstream yet still what most users have on disk.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
        module: nn.Module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def _load_exported(path: Path, _: VersionSpec, device: torch.device) -> nn.Module:
    program = torch.export.load(path)
    if device.type != "cpu":
        program = move_to_device_pass(program, device)
    # NOTE: an exported graph keeps the mode it was traced in; .eval() is not supported.
    module: nn.Module = program.module()
    return module


def _load_state_dict(path: Path, version: VersionSpec, device: torch.device) -> nn.Module:
    assert version.architecture is not None  # noqa: S101 (the manifest guarantees it)
    module = import_architecture(version.architecture)(**version.architecture_args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{version.architecture} built {type(module).__name__}, not nn.Module")
    module.load_state_dict(read_state_dict(path), strict=True)
    return module.to(device).eval()


LOADERS: dict[str, Callable[[Path, VersionSpec, torch.device], nn.Module]] = {
    "torchscript": _load_torchscript,
    "exported": _load_exported,
    "state_dict": _load_state_dict,
}


def memory_bytes(module: nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def load_version(
    spec: ModelSpec,
    version: VersionSpec,
    weights_root: Path,
    digests: WeightDigests | None = None,
) -> LoadedModel:
    """Verify, load and warm up one version; blocking, so run it off the event loop.

    Any failure is a ``RegistryError`` naming the model and version.
    """
    started = time.perf_counter()
    try:
        path = verify_weights(weights_root, version, digests)
        device = resolve_device(spec.device)
        module = LOADERS[version.format](path, version, device)
    except RegistryError as exc:
        exc.details.setdefault("model", spec.name)
        exc.details.setdefault("version", version.version)
        raise
    except Exception as exc:
        raise _load_failed(spec, version, "loading", exc) from exc
    model = LoadedModel(
        spec=spec,
        version=version,
        module=module,
        device=device,
        memory_bytes=memory_bytes(module),
        load_ms=(time.perf_counter() - started) * 1000,
    )
    if spec.warmup:
        started = time.perf_counter()
        try:
            check_output(spec, model.predict_batch(warmup_batch(spec)))
        except Exception as exc:
            raise _load_failed(spec, version, "warm-up", exc) from exc
        model.warmup_ms = (time.perf_counter() - started) * 1000
    return model


def warmup_batch(spec: ModelSpec) -> np.ndarray:
    return np.zeros((WARMUP_BATCH, *spec.input.shape), dtype=NUMPY_DTYPES[spec.input.dtype])


def check_output(spec: ModelSpec, output: np.ndarray) -> None:
    """Refuse at load time what would break every request: no batch axis, wrong label count."""
    if output.ndim == 0 or output.shape[0] != WARMUP_BATCH:
        raise ValueError(
            f"output shape {list(output.shape)} lacks the batch axis (expected {WARMUP_BATCH} rows)"
        )
    labels = spec.output.labels
    if labels is not None and output.shape[1:] != (len(labels),):
        raise ValueError(
            f"output shape per instance {list(output.shape[1:])} does not match "
            f"{len(labels)} labels"
        )


def _load_failed(
    spec: ModelSpec, version: VersionSpec, stage: str, exc: Exception
) -> ModelLoadFailed:
    reason = f"{type(exc).__name__}: {exc}".strip()
    return ModelLoadFailed(
        f"{spec.name}:{version.version} failed during {stage}: {reason}",
        model=spec.name,
        version=version.version,
    )
