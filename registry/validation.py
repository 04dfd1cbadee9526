"""What ``registry validate`` checks: the manifest, then every weight file behind it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from registry.errors import RegistryError, UnsafeArchitecture
from registry.manifest import Manifest, VersionSpec, load_manifest, problem_line
from registry.pt2 import check_exported_archive
from registry.settings import Settings
from registry.weightfiles import read_weights, resolve_weights


def read_manifest(path: Path, *, prefix: str = "") -> tuple[Manifest | None, list[str]]:
    """The manifest, or what is wrong with it: one line per problem (``prefix`` before each
    ``<model>: <key>: <reason>``), or the one reason the file could not be read."""
    try:
        return load_manifest(path), []
    except RegistryError as exc:
        problems = exc.details.get("problems")
        if isinstance(problems, list):
            return None, [prefix + problem_line(p) for p in problems]
        return None, [exc.message]


def validate_manifest(settings: Settings, *, load: bool = False) -> list[str]:
    """Problems found, one line each naming model, version and reason; empty when valid.

    Without ``load``, weights are located, checksummed and, for ``.pt2`` archives, checked
    for anything that loading would unpickle; torch is never imported, so it runs in CI in
    well under a second.
    """
    manifest, problems = read_manifest(settings.manifest)
    if manifest is None:
        return problems

    root, factories = settings.weights_root, settings.architecture_factories
    found: list[str] = []
    for model in manifest.models:
        for version in model.versions:
            try:
                if load:
                    from registry.loaders import load_version

                    load_version(model, version, root, factories=factories)
                else:
                    check_without_loading(version, root, model.handler_of(version)[0])
            except RegistryError as exc:
                found.append(f"{model.name}:{version.version}: {exc.message}")
    return found


def check_without_loading(
    version: VersionSpec, weights_root: Path, handler: str | None = None
) -> None:
    """What can be refused without torch: the file (confined, present, its checksum), a
    ``.pt2`` archive's contents, and an architecture or handler module that does not exist.

    NOTE: whether the architecture is an ``nn.Module`` subclass needs its module imported,
    which imports torch; ``--load`` and every real load check it before calling anything.
    """
    if version.format == "exported":
        check_exported_archive(read_weights(weights_root, version).data)
    elif version.sha256 is not None:
        read_weights(weights_root, version)  # NOTE: the checksum needs the bytes
    else:
        resolve_weights(weights_root, version)  # confined and present: nothing to read
    for kind, reference in (("architecture", version.architecture), ("handler", handler)):
        if reference is not None and (missing := _module_missing(reference.partition(":")[0])):
            raise UnsafeArchitecture(f"{kind} {reference!r}: {missing}")


def _module_missing(module: str) -> str | None:
    """Why ``module`` cannot be found, or None when it can.

    NOTE: finding ``a.b.c`` imports ``a.b``, and a package's ``__init__`` may raise
    anything: that is the version's problem to report, not a crash of ``validate``.
    """
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    except Exception as exc:  # NOTE: any error of a parent package's import
        return f"module {module!r} cannot be found: {type(exc).__name__}: {exc}"
    return None if found is not None else f"no module {module!r}"
