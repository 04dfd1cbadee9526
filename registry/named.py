"""Which value is which input: a native request's ``inputs`` as named arrays.

A model of one input takes its value as is (``{"inputs": [...]}``, one instance or a list
of them); any model takes an object naming each input (``{"text_a": ..., "text_b": ...}``,
each one instance or a batch, all alike) or a list of such objects (a batch, one object
per instance). Names are checked against the manifest's ``inputs``: an unknown or a
missing one is a 422 naming it. Each value then goes through ``registry.codec``'s rules
for its dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from registry.batching import Tensors
from registry.codec import Instances, parse_json, to_instances, too_many_rows
from registry.errors import InvalidInput
from registry.manifest import TensorSpec
from registry.objects import is_b64


@dataclass(frozen=True, slots=True)
class Decoded:
    """A request's declared inputs by name, the same rows each; ``batched`` as sent."""

    tensors: Tensors
    batched: bool

    @classmethod
    def of(cls, spec: TensorSpec, instances: Instances) -> Decoded:
        return cls({spec.name: instances.array}, instances.batched)


def decode_inputs(body: bytes, specs: Sequence[TensorSpec], *, max_rows: int) -> Decoded:
    """``{"inputs": ...}`` (see ``to_inputs``) → each input with a batch axis."""
    document = parse_json(body)
    if not isinstance(document, dict) or "inputs" not in document:
        raise InvalidInput(
            "the body must be a JSON object with an 'inputs' field", **_expected(specs)
        )
    return to_inputs(document["inputs"], specs, max_rows=max_rows)


def to_inputs(inputs: object, specs: Sequence[TensorSpec], *, max_rows: int) -> Decoded:
    """A native request's ``inputs``: the value itself for a one-input model (one instance
    or a list of them), an object naming every input (``{"text_a": ..., "text_b": ...}``,
    each one instance or a batch, alike), or a list of such objects (a batch)."""
    if len(specs) == 1 and not _names_inputs(inputs) and not _lists_named(inputs):
        return Decoded.of(specs[0], to_instances(inputs, specs[0], max_rows=max_rows))
    if isinstance(inputs, dict):
        _check_names(inputs, specs)
        parts = {
            spec.name: to_instances(inputs[spec.name], spec, max_rows=max_rows, what=_what(spec))
            for spec in specs
        }
        if len({(p.batched, len(p.array)) for p in parts.values()}) > 1:
            raise InvalidInput(
                "the inputs must all be one instance, or all batches of the same length",
                **_expected(specs),
            )
        return Decoded({name: p.array for name, p in parts.items()}, parts[specs[0].name].batched)
    if _lists_named(inputs):
        inputs = cast(list[object], inputs)
        if len(inputs) > max_rows:
            raise too_many_rows(len(inputs), max_rows)
        instances = cast(list[dict[str, object]], inputs)
        for instance in instances:
            _check_names(instance, specs)
        tensors: Tensors = {}
        for spec in specs:
            column = [instance[spec.name] for instance in instances]
            part = to_instances(column, spec, max_rows=max_rows, what=_what(spec))
            if not part.batched or len(part.array) != len(column):
                raise InvalidInput(
                    f"each instance's {_what(spec)} must have shape {list(spec.shape)}",
                    **_expected(specs),
                )
            tensors[spec.name] = part.array
        return Decoded(tensors, batched=True)
    raise InvalidInput(
        "'inputs' must be an object naming each of the model's inputs, "
        "or a list of such objects (a batch)",
        **_expected(specs),
    )


def _lists_named(value: object) -> bool:
    """A list of objects that name inputs: a batch, one object per instance."""
    return (
        isinstance(value, list)
        and bool(value)
        and isinstance(value[0], dict)  # NOTE: numbers fail here, at once
        and all(_names_inputs(v) for v in value)
    )


def _names_inputs(value: object) -> bool:
    """An object that names inputs; ``{"b64": ...}`` is a binary value instead."""
    return isinstance(value, dict) and not is_b64(value)


def _check_names(named: dict[str, object], specs: Sequence[TensorSpec]) -> None:
    wanted = [spec.name for spec in specs]
    if unknown := sorted(set(named) - set(wanted)):
        raise InvalidInput(
            f"unknown input {unknown[0]!r}; the model takes {wanted}", **_expected(specs)
        )
    if missing := [name for name in wanted if name not in named]:
        raise InvalidInput(
            f"missing input {missing[0]!r}; the model takes {wanted}", **_expected(specs)
        )


def _what(spec: TensorSpec) -> str:
    return f"input {spec.name!r}"


def _expected(specs: Sequence[TensorSpec]) -> dict[str, object]:
    """The error details that say what the model takes."""
    if len(specs) == 1:
        return {"expected_shape": list(specs[0].shape)}
    return {"expected_inputs": {s.name: {"shape": list(s.shape), "dtype": s.dtype} for s in specs}}
