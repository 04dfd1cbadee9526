"""From a manifest entry to a ``LoadedModel``: find, verify, load, warm up.

Security lives here: weight paths are confined to the weights root (symlinks included),
checksums are verified on the very bytes that are deserialised, nothing is unpickled except
through ``torch.load(weights_only=True)`` (``.pt2`` archives are checked first, see
``registry.pt2``), and an architecture must be an ``nn.Module`` subclass unless the operator
allows a factory by name.
"""

from __future__ import annotations

import importlib
import io
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from torch import nn
from torch.export.passes import move_to_device_pass

from registry.batching import Tensors
from registry.errors import ModelLoadFailed, RegistryError, UnsafeArchitecture
from registry.handler import Handler, HandlerContext
from registry.keys import VersionKey
from registry.manifest import ModelSpec, VersionSpec
from registry.model import LoadedModel
from registry.pt2 import check_exported_archive
from registry.weightfiles import WeightDigests, read_weights

log = logging.getLogger(__name__)

WARMUP_BATCH = 2  # NOTE: two rows prove the batch axis is dynamic, which batching needs.


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


def import_architecture(
    reference: str, factories: Collection[str] = ()
) -> Callable[..., nn.Module]:
    """``package.module:Name`` → an ``nn.Module`` subclass, checked before anything is called.

    A plain callable passes only when the operator names it in ``factories``
    (``REGISTRY_ARCHITECTURE_FACTORIES``): otherwise write access to the manifest would be
    code execution (``architecture: "os:system"`` runs a shell command when called).
    """
    target = _imported("architecture", reference)
    if isinstance(target, type) and issubclass(target, nn.Module):
        return target
    if reference in factories and callable(target):
        return target
    raise UnsafeArchitecture(
        f"architecture {reference!r} is not an nn.Module subclass; a factory function must be "
        "listed in REGISTRY_ARCHITECTURE_FACTORIES to be called"
    )


def import_handler(reference: str) -> type[Handler]:
    """``package.module:Name`` → a ``Handler`` subclass, checked before anything is called
    (as for an architecture: naming code in the manifest must not run arbitrary code)."""
    target = _imported("handler", reference)
    if isinstance(target, type) and issubclass(target, Handler):
        return target
    raise UnsafeArchitecture(f"handler {reference!r} is not a registry.handler.Handler subclass")


def _imported(kind: str, reference: str) -> object:
    """What ``package.module:Name`` names, not yet called or checked."""
    module_name, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise UnsafeArchitecture(f"{kind} {reference!r} cannot be imported: {exc}") from exc


def make_handler(
    spec: ModelSpec, version: VersionSpec, device: torch.device, weights_root: Path
) -> Handler:
    """The version's handler, built with its ``handler_args``; the defaults (``Handler``
    itself) when the manifest names none."""
    reference, arguments = spec.handler_of(version)
    root = weights_root.resolve()
    context = HandlerContext(
        model=spec.name,
        version=version.version,
        inputs=spec.inputs,
        outputs=spec.outputs,
        device=device,
        files=(root / version.path).parent,
        weights_root=root,
    )
    if reference is None:
        return Handler(context)
    return import_handler(reference)(context, **arguments)


def read_state_dict(data: bytes, suffix: str) -> Mapping[str, torch.Tensor]:
    if suffix == ".safetensors":
        return load_safetensors(data)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise TypeError("the file does not hold a flat state dict of tensors")
    return state


_TORCHSCRIPT_LOAD = threading.Lock()
"""NOTE: ``warnings.catch_warnings`` saves and restores the process's filters, which two
loads at once would interleave: one TorchScript load at a time."""


def _load_torchscript(data: bytes, device: torch.device) -> nn.Module:
    with _TORCHSCRIPT_LOAD, warnings.catch_warnings():
        # NOTE: TorchScript is deprecated upstream yet still what most users have on disk.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
        module: nn.Module = torch.jit.load(io.BytesIO(data), map_location=device)
    return module.eval()


_EXPORT_LOAD = threading.Lock()
"""NOTE: ``torch.export.load`` keeps the deserializer in a module global and refuses a
second one at once (``_CURRENT_DESERIALIZER is already set``): one at a time, whatever
``REGISTRY_LOAD_WORKERS`` lets run beside it."""


def _load_exported(data: bytes, device: torch.device) -> nn.Module:
    check_exported_archive(data)
    with _EXPORT_LOAD:
        program = torch.export.load(io.BytesIO(data))
    if device.type != "cpu":
        program = move_to_device_pass(program, device)
    # NOTE: an exported graph keeps the mode it was traced in; .eval() is not supported.
    module: nn.Module = program.module()
    return module


def _load_state_dict(
    data: bytes, version: VersionSpec, device: torch.device, factories: Collection[str]
) -> nn.Module:
    assert version.architecture is not None  # noqa: S101 (the manifest guarantees it)
    architecture = import_architecture(version.architecture, factories)
    module = architecture(**version.architecture_args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{version.architecture} built {type(module).__name__}, not nn.Module")
    module.load_state_dict(read_state_dict(data, version.path.suffix), strict=True)
    return module.to(device).eval()


def deserialise(
    data: bytes, version: VersionSpec, device: torch.device, factories: Collection[str] = ()
) -> nn.Module:
    """The module held by ``data``, read the one way its format allows."""
    if version.format == "torchscript":
        return _load_torchscript(data, device)
    if version.format == "exported":
        return _load_exported(data, device)
    return _load_state_dict(data, version, device, factories)


def memory_bytes(module: nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def load_version(
    spec: ModelSpec,
    version: VersionSpec,
    weights_root: Path,
    *,
    factories: Collection[str] = (),
    digests: WeightDigests | None = None,
) -> LoadedModel:
    """Verify, load and warm up one version; blocking, so run it off the event loop.

    The file is read once: its checksum, the archive check and deserialisation all see the
    same bytes. Any failure is a ``RegistryError`` naming the model and version.
    """
    started = time.perf_counter()
    try:
        weights = read_weights(weights_root, version, digests)
        device = resolve_device(spec.device)
        module = deserialise(weights.data, version, device, factories)
        handler = make_handler(spec, version, device, weights_root)
    except RegistryError as exc:
        exc.details.setdefault("model", spec.name)
        exc.details.setdefault("version", version.version)
        raise
    except Exception as exc:
        raise _load_failed(spec, version, "loading", exc) from exc
    model = LoadedModel(
        spec=spec,
        version_spec=version,
        module=module,
        device=device,
        memory_bytes=memory_bytes(module),
        load_ms=(time.perf_counter() - started) * 1000,
        handler=handler,
        weights_sha256=weights.sha256,
    )
    del weights  # NOTE: the file's bytes, no longer needed once the module holds its tensors
    if spec.warmup:
        warm_up(model, spec, version)
    return model


def warm_up(model: LoadedModel, spec: ModelSpec, version: VersionSpec) -> None:
    """One pass of ``WARMUP_BATCH`` rows from the handler's ``warmup_inputs`` (none: no
    warm-up), checked as every request's will be, and timed."""
    started = time.perf_counter()
    try:
        inputs = model.handler.warmup_inputs(WARMUP_BATCH)
        if inputs is None:
            return
        (answer,) = model.run_blocking([inputs])
        if isinstance(answer, Exception):
            raise answer.__cause__ or answer
        check_outputs(spec, answer)
    except Exception as exc:
        raise _load_failed(spec, version, "warm-up", exc) from exc
    model.warmup_ms = (time.perf_counter() - started) * 1000


def check_outputs(spec: ModelSpec, outputs: Tensors) -> None:
    """Refuse at load time what would break every request: a wrong label count. (Rows,
    names, dtypes and declared shapes were checked by the pass itself.)"""
    for output in spec.outputs:
        shape = outputs[output.name].shape[1:]
        if output.labels is not None and shape != (len(output.labels),):
            raise ValueError(
                f"output {output.name!r} has instance shape {list(shape)}, which does not "
                f"match {len(output.labels)} labels"
            )


_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/])/(?:[^\s'"`/:,()]+/)+(?=[^\s'"`/:,()])""")


def redact_paths(text: str) -> str:
    """``... /srv/models/x/model.pt ...`` → ``... model.pt ...``: a file's name, not its path.

    Load errors reach ``GET /models``; the server's directory layout must not.
    """
    return _ABSOLUTE_PATH.sub("", text)


def _load_failed(
    spec: ModelSpec, version: VersionSpec, stage: str, exc: Exception
) -> ModelLoadFailed:
    # NOTE: the full error, paths included, is for the operator's log only.
    log.warning("%s:%s failed during %s", spec.name, version.version, stage, exc_info=exc)
    reason = redact_paths(f"{type(exc).__name__}: {exc}".strip())
    return ModelLoadFailed(reason, VersionKey(spec.name, version.version), stage)
