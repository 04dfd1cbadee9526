"""JSON bodies to NumPy arrays and back, on the hot path.

orjson parses the body and NumPy builds the array in one call: no per-number pydantic
validation. Shape and dtype are checked against the manifest so a client learns exactly
what was expected (422) instead of meeting a model error (500).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from registry.batching import Array
from registry.errors import InvalidInput, InvalidJSON
from registry.manifest import TensorSpec

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name)
    for name in ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8")
} | {"bool": np.dtype(np.bool_)}

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class Instances:
    """Decoded inputs, always with a batch axis; ``batched`` remembers what the client sent."""

    array: Array
    batched: bool


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidJSON("the request body is empty; send a JSON object with 'inputs'")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from exc


def decode_inputs(body: bytes, spec: TensorSpec) -> Instances:
    """``{"inputs": instance or [instances]}`` → an array of shape ``(batch, *spec.shape)``."""
    document = parse_json(body)
    if not isinstance(document, dict) or "inputs" not in document:
        raise InvalidInput(
            "the body must be a JSON object with an 'inputs' field",
            expected_shape=list(spec.shape),
        )
    return to_instances(document["inputs"], spec)


def to_instances(inputs: object, spec: TensorSpec) -> Instances:
    return shape_instances(_to_array(inputs, spec), spec)


def shape_instances(array: Array, spec: TensorSpec) -> Instances:
    """One instance of the declared shape, or a batch of them; anything else is a 422."""
    if array.shape == spec.shape:
        return Instances(array[np.newaxis], batched=False)
    if array.ndim == len(spec.shape) + 1 and array.shape[1:] == spec.shape and len(array):
        return Instances(array, batched=True)
    if array.size == 0:
        raise InvalidInput("'inputs' is empty", expected_shape=list(spec.shape))
    raise InvalidInput(
        f"'inputs' has shape {list(array.shape)}; expected one instance of shape "
        f"{list(spec.shape)} or a batch of shape [n, {', '.join(map(str, spec.shape))}]",
        expected_shape=list(spec.shape),
        received_shape=list(array.shape),
    )


def _to_array(inputs: object, spec: TensorSpec) -> Array:
    dtype = NUMPY_DTYPES[spec.dtype]
    if not isinstance(inputs, list | int | float):
        raise InvalidInput(
            f"'inputs' must be a number or nested lists of numbers ({spec.dtype}), "
            f"not {type(inputs).__name__}",
            expected_shape=list(spec.shape),
        )
    try:
        parsed = np.asarray(inputs)
    except ValueError as exc:  # ragged nesting
        raise InvalidInput(
            "'inputs' is ragged: every instance must have the same shape",
            expected_shape=list(spec.shape),
        ) from exc
    if parsed.dtype.kind not in "biuf" or (parsed.dtype.kind == "f" and dtype.kind in "biu"):
        if parsed.size == 0:
            return parsed.astype(dtype)
        raise InvalidInput(
            f"'inputs' must hold {spec.dtype} values; received {_describe_kind(parsed)}",
            expected_shape=list(spec.shape),
            expected_dtype=spec.dtype,
        )
    return parsed.astype(dtype, copy=False)


def _describe_kind(array: Array) -> str:
    return {"f": "floating-point numbers", "U": "strings", "O": "mixed or non-numeric values"}.get(
        array.dtype.kind, str(array.dtype)
    )


def encode_prediction(
    model: str, version: str, outputs: Array, batched: bool, labels: tuple[str, ...] | None
) -> bytes:
    """The predict response; ``labels`` maps each row's argmax to its label."""
    document: dict[str, Any] = {
        "model": model,
        "version": version,
        "outputs": outputs if batched else outputs[0],
    }
    if labels is not None:
        names = [labels[i] for i in outputs.reshape(len(outputs), -1).argmax(axis=1)]
        document["labels"] = names if batched else names[0]
    return dumps(document)


def dumps(document: object) -> bytes:
    return orjson.dumps(document, option=_DUMPS_OPTIONS)
