"""What ``registry validate`` checks: the manifest, then every weight file behind it."""

from __future__ import annotations

from registry.errors import RegistryError
from registry.manifest import load_manifest, problem_line
from registry.settings import Settings


def validate_manifest(settings: Settings, *, load: bool = False) -> list[str]:
    """Problems found, one line each naming model, version and reason; empty when valid.

    Without ``load``, weights are located, checksummed and, for ``.pt2`` archives, checked
    for anything that loading would unpickle; architectures are imported and checked. No
    model is built, so it runs in CI in seconds.
    """
    try:
        manifest = load_manifest(settings.manifest)
    except RegistryError as exc:
        problems = exc.details.get("problems")
        if isinstance(problems, list):
            return [problem_line(p) for p in problems]
        return [exc.message]

    from registry.loaders import check_loadable, load_version

    root, factories = settings.weights_root, settings.architecture_factories
    found: list[str] = []
    for model in manifest.models:
        for version in model.versions:
            try:
                if load:
                    load_version(model, version, root, factories=factories)
                else:
                    check_loadable(version, root, factories)
            except RegistryError as exc:
                found.append(f"{model.name}:{version.version}: {exc.message}")
    return found
