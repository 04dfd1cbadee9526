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
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from registry.errors import ManifestError

ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def _not_a_decimal(value: object) -> object:
    """YAML reads ``version: 1.10`` as the number 1.1: a version that clients would ask
    for as ``1.10`` and never find. Integers are left alone (``version: 2`` is "2")."""
    if isinstance(value, float):
        raise ValueError(f"reads as the number {value!r}; write the version in quotes")
    return value


VersionName = Annotated[
    str,
    BeforeValidator(_not_a_decimal),
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
ArchitectureRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
HandlerRef = ArchitectureRef
Device = Annotated[str, StringConstraints(pattern=r"^(cpu|auto|cuda(:\d+)?)$")]

TensorName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]

DType = Literal[
    "float32",
    "float64",
    "float16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "string",
    "bytes",
]
"""``string`` is text (UTF-8), ``bytes`` anything binary (an image); both are V2 ``BYTES``."""
OBJECT_DTYPES = ("string", "bytes")
"""The dtypes whose values are Python objects, which only a handler turns into tensors."""
Format = Literal["torchscript", "exported", "state_dict"]
LoadPolicy = Literal["eager", "lazy"]
"""``eager``: loaded at start-up and on reload; ``lazy``: on its first request."""

_STRICT = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def _axis(length: int) -> int:
    if length == 0 or length < -1:
        raise ValueError("must be greater than or equal to 1, or -1 for a length that varies")
    return length


Axis = Annotated[int, AfterValidator(_axis)]
"""An axis length; ``-1`` for one whose length varies per request (a token sequence)."""


def fits_shape(shape: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    """Whether an instance's shape is the declared one, ``-1`` matching any length."""
    return shape == declared or (
        len(shape) == len(declared) and all(d in (-1, n) for n, d in zip(shape, declared))  # noqa: B905
    )


class TensorSpec(BaseModel):
    """One input tensor of one instance, batch axis excluded."""

    model_config = _STRICT

    name: TensorName = "input"
    shape: tuple[Axis, ...]
    dtype: DType = "float32"

    @property
    def text(self) -> bool:
        """A string or bytes tensor: Python objects, never a torch tensor."""
        return self.dtype in OBJECT_DTYPES


class OutputSpec(BaseModel):
    """One output tensor; its shape and dtype are learned at warm-up where not declared."""

    model_config = _STRICT

    name: TensorName = "output"
    shape: tuple[Axis, ...] | None = None
    dtype: DType | None = None
    labels: tuple[str, ...] | None = Field(default=None, min_length=1)
    """One per entry of the last axis: the answer names the largest one's label."""


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
    handler: HandlerRef | None = None
    """Replaces the model's handler (and its arguments) for this version."""
    handler_args: Mapping[str, Any] = Field(default_factory=dict)
    load: LoadPolicy | None = None
    """Replaces the model's ``load`` for this version."""
    resident: bool | None = None
    """Replaces the model's ``resident`` for this version."""

    @field_validator("path")
    @classmethod
    def _relative_inside_root(cls, path: PurePosixPath) -> PurePosixPath:
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError("must be a relative path inside the weights root (no '..')")
        if "\0" in str(path):
            raise ValueError("must not hold a NUL character")
        return path

    @model_validator(mode="after")
    def _architecture_matches_format(self) -> Self:
        if self.format == "state_dict" and self.architecture is None:
            raise ValueError("format state_dict needs 'architecture' (module:factory)")
        if self.format != "state_dict" and (self.architecture or self.architecture_args):
            raise ValueError(f"format {self.format} takes no 'architecture' or its args")
        if self.format == "state_dict" and self.path.suffix not in (".safetensors", ".pt"):
            raise ValueError("a state_dict path ends in .safetensors or .pt")
        if self.handler_args and self.handler is None:
            raise ValueError("'handler_args' without a 'handler' of this version's own")
        return self


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numbers compare numerically ("10" > "9") and above any non-numeric name."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class ModelSpec(BaseModel):
    model_config = _STRICT

    name: ModelName
    description: str = ""
    input: TensorSpec | None = None
    """One input: the shorthand for ``inputs`` with one entry (named ``input``)."""
    inputs: tuple[TensorSpec, ...] = ()
    """Named inputs, as clients send them (before any handler's ``decode``)."""
    output: OutputSpec | None = None
    """One output: the shorthand for ``outputs`` with one entry (named ``output``)."""
    outputs: tuple[OutputSpec, ...] = ()
    handler: HandlerRef | None = None
    """``package.module:Name``, a ``registry.handler.Handler`` subclass: the code around the
    forward pass (tokenize, decode an image, pool...)."""
    handler_args: Mapping[str, Any] = Field(default_factory=dict)
    default_version: VersionName | None = None
    aliases: Mapping[VersionName, VersionName] = Field(default_factory=dict)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    instances: int = Field(default=1, ge=1, le=64)
    """Forward passes of a version that may run at once, each on an inference thread of
    its own; they share one copy of the weights (``registry.instances``)."""
    device: Device = "cpu"
    warmup: bool = True
    load: LoadPolicy = "eager"
    resident: bool = False
    """Never evicted to make room under the memory budget (an operator may still unload)."""
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

    @model_validator(mode="after")
    def _tensors_consistent(self) -> Self:
        """One form of each (``input`` or ``inputs``), unique names, and text only where
        a handler turns it into tensors.

        NOTE: the shorthands are written into ``inputs``/``outputs`` here, so that every
        reader has one list to read; the frozen model is still being built.
        """
        if self.input is None and not self.inputs:
            raise ValueError("declare 'input' (one tensor) or 'inputs' (a list of them)")
        if self.input is not None and self.inputs:
            raise ValueError("declare 'input' (one tensor) or 'inputs' (a list), not both")
        if self.output is not None and self.outputs:
            raise ValueError("declare 'output' (one tensor) or 'outputs' (a list), not both")
        if self.input is not None:
            object.__setattr__(self, "inputs", (self.input,))
        if not self.outputs:
            object.__setattr__(self, "outputs", (self.output or OutputSpec(),))
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in tensors]
            if duplicates := sorted({n for n in names if names.count(n) > 1}):
                raise ValueError(f"duplicate {kind} names {duplicates}")
        if "b64" in (t.name for t in self.inputs):
            raise ValueError("an input cannot be named 'b64': {\"b64\": ...} is a binary value")
        handled = self.handler is not None or all(v.handler for v in self.versions)
        text = [t.name for t in self.inputs if t.text]
        text += [t.name for t in self.outputs if t.dtype in OBJECT_DTYPES]
        if text and not handled:
            raise ValueError(
                f"tensors {text} are text or bytes, which only a 'handler' turns into tensors"
            )
        return self

    def handler_of(self, version: VersionSpec) -> tuple[str | None, Mapping[str, Any]]:
        """The handler a version runs with and its arguments: its own, else the model's."""
        if version.handler is not None:
            return version.handler, version.handler_args
        return self.handler, self.handler_args

    def lazy(self, version: VersionSpec) -> bool:
        """Whether a version loads on its first request rather than at start-up."""
        return (version.load or self.load) == "lazy"

    def pinned(self, version: VersionSpec) -> bool:
        """Whether a version is resident: never evicted to make room."""
        return self.resident if version.resident is None else version.resident

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
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {str(path)!r} is not UTF-8 text: {exc.reason}") from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        where = " ".join(str(exc).split())  # NOTE: one line, so a log entry stays one line
        raise ManifestError(f"manifest {str(path)!r} is not valid YAML: {where}") from exc
    except RecursionError as exc:
        raise ManifestError(f"manifest {str(path)!r} nests too deep to read") from exc
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
