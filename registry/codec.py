"""JSON bodies to NumPy arrays and back, on the hot path.

orjson parses the body and NumPy builds the array in one call: no per-number pydantic
validation. Shape and dtype are checked against the manifest so a client learns exactly
what was expected (422) instead of meeting a model error (500).

Which value goes to which named input is ``registry.named``'s; text and binary values are
``registry.objects``'s. What a numeric input accepts is decided here once, for every route
and encoding (native JSON, raw, ``.npy``, V2 JSON and V2 binary), by ``fit_dtype`` and
``instance_shape``:

- A value must fit the declared dtype exactly enough: a float goes only into a float
  dtype, an integer into an integer or float dtype, ``true``/``false`` into any dtype (as
  1/0, which is exact: NumPy's ``same_kind`` rule, the one ``.npy`` casts always had). An
  integer outside the dtype's range (300 into int8, -1 into uint8, 2**64-1 into int64) or
  a float beyond its largest finite value (3.5e38 into float32) is a 422, never wrapped or
  turned into infinity. Strings, ``null`` and objects are not numbers (422); ragged
  nesting is a 422.
- Non-finite floats (NaN, ±infinity) are refused (422) whatever the encoding: JSON cannot
  carry them (orjson refuses the literals, 400 ``invalid_json``), so raw bytes and ``.npy``
  files do not get them in either; a bool tensor's raw bytes must be 0 or 1.
- One request holds at most the model's ``batching.max_batch_size`` instances: more is a
  413 ``payload_too_large`` with ``max_batch_size``, decided from the declared shape
  (``X-Shape``, the ``.npy`` header, V2 ``shape``, a JSON batch's length) before the
  tensor is built.

The checks are vectorised (one reduction over the array where the dtype needs one), so a
valid request pays microseconds for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from registry.batching import Array, Tensors
from registry.dtypes import DTYPES, MAX_AXES, NUMERIC
from registry.errors import InvalidInput, InvalidJSON, TooManyRows
from registry.manifest import OutputSpec, TensorSpec, fits_shape
from registry.objects import contiguous, json_type, json_value, to_objects

_MAX_DIM = 2**63 - 1

# NOTE: which array kinds each dtype kind takes: bool into anything, integers into integers
# or floats, floats into floats only; values are then range-checked (``_fits``).
_ACCEPTS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}
_LIMITS: dict[np.dtype[Any], tuple[float, float]] = {
    dtype: (float(-np.finfo(dtype).max), float(np.finfo(dtype).max))
    if dtype.kind == "f"
    else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for dtype in (row.numpy for row in NUMERIC.values())
    if dtype.kind != "b"
}

_ROUNDS_TO_INFINITY: dict[np.dtype[Any], float] = {
    dtype: float(top) + float(top - np.nextafter(top, dtype.type(0))) / 2
    for dtype in _LIMITS
    if dtype.kind == "f"
    for top in [np.finfo(dtype).max]
}
"""The magnitude from which a value rounds to infinity in each float dtype: its largest
value and half a step beyond (infinity for float64). Below it a value rounds to a finite
one: ``3.4028235e+38``, float32's largest as a JSON encoder writes it, included."""

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class Instances:
    """One decoded input, always with a batch axis; ``batched`` remembers what was sent."""

    array: Array
    batched: bool


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidJSON("the request body is empty; send a JSON object with 'inputs'")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from exc


def to_instances(
    inputs: object, spec: TensorSpec, *, max_rows: int, what: str = "'inputs'"
) -> Instances:
    rows = _batch_rows(inputs, len(spec.shape))
    if rows is not None and rows > max_rows:  # NOTE: before NumPy reads a huge list
        raise too_many_rows(rows, max_rows)
    array = to_objects(inputs, spec, what) if spec.text else to_array(inputs, spec, what)
    return shape_instances(array, spec, max_rows=max_rows, what=what)


def shape_instances(
    array: Array, spec: TensorSpec, *, max_rows: int, what: str = "'inputs'"
) -> Instances:
    """One instance of the declared shape, or a batch of them; anything else is a 422."""
    if instance_shape(array.shape, spec, max_rows=max_rows, what=what):
        return Instances(array, batched=True)
    return Instances(array[np.newaxis], batched=False)


def instance_shape(
    shape: tuple[int, ...], spec: TensorSpec, *, max_rows: int, what: str = "'inputs'"
) -> bool:
    """Whether ``shape`` is a batch (True) or one instance (False) of ``spec``.

    Anything else is a 422, an empty batch included; more than ``max_rows`` instances a
    413. Callers check a declared shape with this before allocating anything for it.
    """
    declared = spec.shape
    if shape == declared or (-1 in declared and fits_shape(shape, declared) and 0 not in shape):
        return False
    if len(shape) == len(spec.shape) + 1 and fits_shape(shape[1:], spec.shape):
        rows = shape[0]
        if rows > max_rows:
            raise too_many_rows(rows, max_rows)
        if rows > 0 and 0 not in shape:  # NOTE: an empty -1 axis is empty in a batch too
            return True
    if 0 in shape:
        raise InvalidInput(f"{what} is empty", expected_shape=list(spec.shape))
    raise InvalidInput(
        f"{what} has shape {list(shape)}; expected one instance of shape "
        f"{list(spec.shape)} or a batch of shape [{', '.join(map(str, ('n', *spec.shape)))}]",
        expected_shape=list(spec.shape),
        received_shape=list(shape),
    )


def as_shape(dims: Sequence[object]) -> tuple[int, ...] | None:
    """``dims`` as a shape NumPy can hold (at most 64 non-negative int64s), else None."""
    if len(dims) > MAX_AXES:
        return None
    shape = tuple(n for n in dims if type(n) is int and 0 <= n <= _MAX_DIM)
    return shape if len(shape) == len(dims) else None


def parse_count(text: str) -> int | None:
    """A non-negative count a client wrote in a header, else None.

    NOTE: ASCII digits only (``str.isdigit`` also takes ``²``, which ``int`` refuses) and at
    most 19 of them (an int64), so no header costs a huge ``int()`` or a 500.
    """
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None


def too_many_rows(rows: int, max_rows: int) -> TooManyRows:
    return TooManyRows(rows, max_rows)


def _batch_rows(inputs: object, ndim: int) -> int | None:
    """``len(inputs)`` when it nests like a batch (lists ``ndim + 1`` deep at its start)."""
    if not isinstance(inputs, list):
        return None
    probe: object = inputs
    for _ in range(ndim + 1):
        if not isinstance(probe, list) or not probe:
            return None
        probe = probe[0]
    return len(inputs)


def to_array(values: object, spec: TensorSpec, what: str = "'inputs'") -> Array:
    """JSON numbers (a number or nested lists) as an array of the spec's dtype, or a 422.

    The one conversion both JSON front ends use (native ``inputs``, V2 ``data``), so they
    accept exactly the same values.
    """
    if not isinstance(values, list | int | float):  # NOTE: bool is an int
        raise InvalidInput(
            f"{what} must be a number or nested lists of numbers ({spec.dtype}), "
            f"not {json_type(values)}",
            expected_shape=list(spec.shape),
        )
    try:
        parsed = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidInput(
            f"{what} is ragged (or nested too deep): every instance must have the same shape",
            expected_shape=list(spec.shape),
        ) from exc
    return fit_dtype(parsed, spec, what)


def fit_dtype(array: Array, spec: TensorSpec, what: str = "'inputs'") -> Array:
    """``array`` as a writable, C-ordered array of the spec's dtype; 422 if a value doesn't fit."""
    dtype = DTYPES[spec.dtype].numpy
    if array.dtype.kind not in _ACCEPTS[dtype.kind]:
        if array.size == 0:
            return array.astype(dtype)
        raise InvalidInput(
            f"{what} must hold {spec.dtype} values; received {_describe_kind(array)}",
            expected_shape=list(spec.shape),
            expected_dtype=spec.dtype,
        )
    if array.size and not _fits(array, dtype):
        raise InvalidInput(
            f"{what} holds {_misfit(array, dtype)}",
            expected_shape=list(spec.shape),
            expected_dtype=spec.dtype,
        )
    return array.astype(dtype, order="C", copy=not array.flags.writeable)


def accepts(source: np.dtype[Any], spec: TensorSpec) -> bool:
    """Whether arrays of ``source`` may be cast to the spec's dtype (values permitting)."""
    return source.kind in _ACCEPTS[DTYPES[spec.dtype].numpy.kind]


def _fits(array: Array, dtype: np.dtype[Any]) -> bool:
    """Every value is in ``dtype``'s range (and finite): one or two reductions at most."""
    source = array.dtype
    if source.kind == "b":
        return True
    if source.kind == "f":
        # NOTE: False for NaN; float() so that NumPy never casts the bound to a narrower type
        return float(np.abs(array).max()) < _ROUNDS_TO_INFINITY[dtype]  # NOTE: floats only
    if source == dtype or (dtype.kind == "f" and dtype.itemsize >= 4):
        return True  # NOTE: every int64 and uint64 is finite in float32
    if np.can_cast(source, dtype, "safe"):
        return True
    if dtype.kind == "f":
        bound = _ROUNDS_TO_INFINITY[dtype]
        return bool(-bound < float(array.min()) and float(array.max()) < bound)
    low, high = _LIMITS[dtype]
    return bool(low <= int(array.min()) and int(array.max()) <= high)


def _misfit(array: Array, dtype: np.dtype[Any]) -> str:
    low, high = _LIMITS[dtype]
    if dtype.kind == "f":
        return f"a value that is not a finite {dtype} (NaN, infinity, or beyond ±{high:.7g})"
    return f"values from {array.min()} to {array.max()}; {dtype} holds {low} to {high}"


def _describe_kind(array: Array) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "floating-point numbers",
        "U": "strings",
        "O": "mixed or non-numeric values",
    }.get(array.dtype.kind, str(array.dtype))


def encode_prediction(
    model: str, version: str, outputs: Tensors, batched: bool, specs: Sequence[OutputSpec]
) -> bytes:
    """The predict response: ``outputs`` is the one output's value, or an object naming
    each; ``labels`` names each row's largest entry for an output that declares labels."""
    document: dict[str, Any] = {"model": model, "version": version}
    if len(specs) == 1:
        spec = specs[0]
        array = outputs[spec.name]
        if array.dtype.kind != "O":  # NOTE: numbers, which orjson writes as they are
            document["outputs"] = contiguous(array if batched else array[0])
        else:
            document["outputs"] = json_value(array, batched)
        if spec.labels is not None:
            document["labels"] = _labels(outputs[spec.name], spec.labels, batched)
        return dumps(document)
    document["outputs"] = {s.name: json_value(outputs[s.name], batched) for s in specs}
    labelled = {
        s.name: _labels(outputs[s.name], s.labels, batched) for s in specs if s.labels is not None
    }
    if labelled:
        document["labels"] = labelled
    return dumps(document)


def _labels(array: Array, labels: tuple[str, ...], batched: bool) -> list[str] | str:
    names = [labels[i] for i in array.reshape(len(array), -1).argmax(axis=1)]
    return names if batched else names[0]


def dumps(document: object) -> bytes:
    return orjson.dumps(document, option=_DUMPS_OPTIONS)
