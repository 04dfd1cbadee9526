"""Text and binary values in JSON: strings and ``{"b64": ...}``, to object arrays and back.

A ``string`` tensor holds JSON strings; a ``bytes`` tensor (an image) holds TF Serving's
``{"b64": "<base64>"}``, which JSON needs for bytes that are not text. Either may nest in
lists like numbers do, and comes out as a NumPy object array of ``str`` or ``bytes`` of
that shape; anything else (a number where text is declared, ragged nesting, base64 that
does not decode) is a 422 naming the input.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, cast

import numpy as np

from registry.batching import Array
from registry.dtypes import MAX_AXES
from registry.errors import InvalidInput
from registry.manifest import TensorSpec


def to_objects(values: object, spec: TensorSpec, what: str = "'inputs'") -> Array:
    """A JSON string (``string``) or ``{"b64": ...}`` (``bytes``), or nested lists of them,
    as an object array of ``str`` or ``bytes``; anything else is a 422."""
    shape: list[int] = []
    probe = values
    while isinstance(probe, list) and len(shape) < MAX_AXES:
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    leaf = _text if spec.dtype == "string" else _binary
    flat: list[str | bytes] = []

    def walk(value: object, depth: int) -> None:
        if depth == len(shape):
            flat.append(leaf(value, what))
            return
        if not isinstance(value, list) or len(value) != shape[depth]:
            raise InvalidInput(
                f"{what} is ragged (or nested too deep): every instance must have the same shape",
                expected_shape=list(spec.shape),
            )
        for item in value:
            walk(item, depth + 1)

    walk(values, 0)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must hold text (JSON strings), not {json_type(value)}")
    return value


def _binary(value: object, what: str) -> bytes:
    if is_b64(value):
        encoded = cast(dict[str, object], value)["b64"]
        if not isinstance(encoded, str):
            raise InvalidInput(f"{what}: 'b64' must be a base64 string, not {json_type(encoded)}")
    else:
        encoded = None
    if not isinstance(encoded, str):
        raise InvalidInput(
            f'{what} must hold binary values as {{"b64": "<base64>"}}, not {json_type(value)}'
        )
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise InvalidInput(f"{what} holds a 'b64' value that is not base64: {exc}") from exc


def is_b64(value: object) -> bool:
    """``{"b64": ...}``: a binary value, never an object naming inputs."""
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def json_value(array: Array, batched: bool) -> Any:
    """An output as orjson writes it: NumPy numbers directly; text and bytes (which it
    cannot) as strings and ``{"b64": ...}``."""
    value = array if batched else array[0]
    if array.dtype.kind != "O":
        return contiguous(value)
    return json_objects(value.tolist() if isinstance(value, np.ndarray) else value)


def contiguous(value: Any) -> Any:
    """``value``, in the one layout orjson writes: a model may answer with a view (``x[:,
    :2]``, a transpose), which NumPy keeps strided, and orjson refuses."""
    if isinstance(value, np.ndarray) and not value.flags.c_contiguous:
        return np.ascontiguousarray(value)
    return value


def json_objects(value: object) -> object:
    if isinstance(value, list):
        return [json_objects(item) for item in value]
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def json_type(value: object) -> str:
    return {
        dict: "an object",
        str: "a string",
        type(None): "null",
        list: "a list",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), type(value).__name__)
