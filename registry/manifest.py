"""The manifest (``models.yaml``) as frozen pydantic models, and ``load_manifest``.

The whole file is validated before anything is loaded, so a typo never leaves the server
half-configured; errors name the model and the key. No torch import here: validating a
manifest must stay cheap enough for ``registry validate`` and for CI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from registry.errors import ManifestError

ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
VersionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
ArchitectureRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
Device = Annotated[str, StringConstraints(pattern=r"^(cpu|auto|cuda(:\d+)?)$")]

DType = Literal["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"]
Format = Literal["torchscript", "exported", "state_dict"]

_STRICT = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class TensorSpec(BaseModel):
    """One instance's tensor, batch axis excluded."""

    model_config = _STRICT

    shape: tuple[Annotated[int, Field(ge=1)], ...]
    dtype: DType = "float32"


class OutputSpec(BaseModel):
    model_config = _STRICT

    labels: tuple[str, ...] | None = Field(default=None, min_length=1)


class BatchingSpec(BaseModel):
    """How requests to one version are grouped into forward passes.

    A batcher runs a lone request at once; only requests that queue while a pass runs are
    grouped, so batching adds no latency at low load.
    """

    model_config = _STRICT

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    max_queue: int = Field(default=256, ge=1)


class VersionSpec(BaseModel):
    model_config = _STRICT

    version: VersionName
    format: Format
    path: PurePosixPath
    sha256: Sha256 | None = None
    architecture: ArchitectureRef | None = None
    architecture_args: Mapping[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _relative_inside_root(cls, path: PurePosixPath) -> PurePosixPath:
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError("must be a relative path inside the weights root (no '..')")
        return path

    @model_validator(mode="after")
    def _architecture_matches_format(self) -> Self:
        if self.format == "state_dict" and self.architecture is None:
            raise ValueError("format state_dict needs 'architecture' (module:factory)")
        if self.format != "state_dict" and (self.architecture or self.architecture_args):
            raise ValueError(f"format {self.format} takes no 'architecture' or its args")
        if self.format == "state_dict" and self.path.suffix not in (".safetensors", ".pt"):
            raise ValueError("a state_dict path ends in .safetensors or .pt")
        return self


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numbers compare numerically ("10" > "9") and above any non-numeric name."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class ModelSpec(BaseModel):
    model_config = _STRICT

    name: ModelName
    description: str = ""
    input: TensorSpec
    output: OutputSpec = Field(default_factory=OutputSpec)
    default_version: VersionName | None = None
    aliases: Mapping[VersionName, VersionName] = Field(default_factory=dict)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    device: Device = "cpu"
    warmup: bool = True
    versions: tuple[VersionSpec, ...]

    @model_validator(mode="after")
    def _versions_consistent(self) -> Self:
        # NOTE: here, not as the field's min_length, which pydantic also reports when the
        # only version is invalid: one mistake would read as two.
        if not self.versions:
            raise ValueError("a model needs at least one version")
        names = [v.version for v in self.versions]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"duplicate versions {duplicates}")
        if self.default_version is not None and self.default_version not in names:
            raise ValueError(f"default_version {self.default_version!r} is not among {names}")
        for alias, target in self.aliases.items():
            if alias in names:
                raise ValueError(f"alias {alias!r} shadows a version of the same name")
            if target not in names:
                raise ValueError(f"alias {alias!r} points to {target!r}, not among {names}")
        return self

    @property
    def resolved_default(self) -> str:
        """The declared default, else the highest version."""
        if self.default_version is not None:
            return self.default_version
        return max((v.version for v in self.versions), key=version_sort_key)

    def resolve(self, version_or_alias: str | None) -> str | None:
        """A concrete version for a version, an alias or ``None`` (the default)."""
        if version_or_alias is None:
            return self.resolved_default
        if version_or_alias in self.aliases:
            return self.aliases[version_or_alias]
        if any(v.version == version_or_alias for v in self.versions):
            return version_or_alias
        return None


class Manifest(BaseModel):
    model_config = _STRICT

    models: tuple[ModelSpec, ...] = Field(default=(), validate_default=True)

    @field_validator("models", mode="before")
    @classmethod
    def _none_is_empty(cls, models: object) -> object:
        return () if models is None else models  # NOTE: `models:` with nothing under it

    @field_validator("models")
    @classmethod
    def _some_and_unique(cls, models: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
        # NOTE: an empty manifest is far more often a file caught mid-write or truncated
        # than a wish to serve nothing; applied, it would remove every model at once.
        if not models:
            raise ValueError("a manifest must declare at least one model")
        names = [m.name for m in models]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"duplicate model names {duplicates}")
        return models


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest; any problem is one ``ManifestError`` listing them all."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {str(path)!r}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        where = " ".join(str(exc).split())  # NOTE: one line, so a log entry stays one line
        raise ManifestError(f"manifest {str(path)!r} is not valid YAML: {where}") from exc
    return parse_manifest(raw, source=str(path))


def parse_manifest(raw: object, *, source: str = "manifest") -> Manifest:
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(raw, error["loc"], error["msg"]) for error in exc.errors()]
        lines = "; ".join(problem_line(p) for p in problems)
        raise ManifestError(f"invalid manifest {source!r}: {lines}", problems=problems) from exc


def problem_line(problem: Mapping[str, str | None]) -> str:
    """``digits: versions[0].path: <reason>``: one problem as people read it."""
    return f"{problem['model'] or '(top level)'}: {problem['key']}: {problem['reason']}"


def _describe(raw: object, loc: Sequence[int | str], reason: str) -> dict[str, str | None]:
    """``("models", 3, "versions", 0, "path")`` → model ``digits``, key ``versions[0].path``."""
    model: str | None = None
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        model = _model_name(raw, loc[1])
        key_loc = loc[2:]
    else:
        key_loc = loc
    key = ""
    for part in key_loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return {"model": model, "key": key or "(model)", "reason": _clean(reason)}


def _model_name(raw: object, index: int) -> str:
    models = raw.get("models") if isinstance(raw, dict) else None
    entry = models[index] if isinstance(models, list) and index < len(models) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    return str(name) if name is not None else f"models[{index}]"


def _clean(reason: str) -> str:
    return re.sub(r"^Value error, ", "", reason)
