"""Tensors as bytes: raw little-endian with an ``X-Shape`` header, or ``.npy``.

For clients that already hold arrays, JSON is pure overhead: 64 floats are ~1 KB of text
to print and parse, 256 bytes raw. Raw inputs must already have the model's dtype (nothing
is guessed from bytes); ``.npy`` inputs may be any dtype whose values fit it (float64 for
float32, int64 for uint8), by the rules in ``registry.codec``. Either way the declared
shape (``X-Shape``, the ``.npy`` header) is checked against the model, its batch size cap
included, before anything is allocated, and NaN or infinity is refused like in JSON.
``.npy`` bodies are read here, header first, never by ``np.load`` (which would open a zip
archive, or allocate whatever shape a header claims).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from registry.batching import Array
from registry.codec import (
    Instances,
    accepts,
    as_shape,
    fit_dtype,
    instance_shape,
    parse_count,
)
from registry.dtypes import DTYPES, MAX_AXES
from registry.errors import InvalidInput
from registry.manifest import TensorSpec

RAW = "application/octet-stream"
NPY = "application/x-npy"

_NPY_HEADERS: dict[tuple[int, int], Callable[..., tuple[Any, bool, np.dtype[Any]]]] = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def decode_raw(
    body: bytes, shape_header: str | None, spec: TensorSpec, *, max_rows: int
) -> Instances:
    if not shape_header:
        raise InvalidInput(
            "a raw tensor body needs an 'X-Shape' header, e.g. 'X-Shape: 1,64'",
            expected_shape=list(spec.shape),
        )
    shape = _parse_shape(shape_header)
    if shape is None:
        raise InvalidInput(
            f"'X-Shape' must be comma-separated integers (non-negative, at most {MAX_AXES}), "
            f"not {shape_header[:200]!r}",
            expected_shape=list(spec.shape),
        )
    batched = instance_shape(shape, spec, max_rows=max_rows)
    expected_bytes = math.prod(shape) * DTYPES[spec.dtype].numpy.itemsize
    if len(body) != expected_bytes:
        raise InvalidInput(
            f"X-Shape {list(shape)} of {spec.dtype} is {expected_bytes} bytes; "
            f"the body has {len(body)}",
            expected_shape=list(spec.shape),
            expected_dtype=spec.dtype,
        )
    array = tensor_from_bytes(body, spec).reshape(shape)
    return Instances(array if batched else array[np.newaxis], batched)


def decode_npy(body: bytes, spec: TensorSpec, *, max_rows: int) -> Instances:
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = _NPY_HEADERS.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy format version {version}")
        dims, fortran_order, source = read_header(stream)
    except Exception as exc:  # NOTE: NumPy's header parser has raised ValueError, TokenError...
        raise InvalidInput(
            f"the body is not a .npy array: {exc}", expected_shape=list(spec.shape)
        ) from exc
    if not accepts(source, spec):
        raise InvalidInput(
            f".npy array of {source} does not cast to {spec.dtype}",
            expected_shape=list(spec.shape),
            expected_dtype=spec.dtype,
        )
    shape = as_shape(dims)
    if shape is None:
        raise InvalidInput(
            f"the .npy header's shape {dims} is not an array shape",
            expected_shape=list(spec.shape),
        )
    batched = instance_shape(shape, spec, max_rows=max_rows)
    data = memoryview(body)[stream.tell() :]
    expected_bytes = math.prod(shape) * source.itemsize
    if len(data) != expected_bytes:
        raise InvalidInput(
            f"the .npy header declares {list(shape)} of {source}, {expected_bytes} bytes; "
            f"{len(data)} follow it",
            expected_shape=list(spec.shape),
        )
    if source.kind == "b":
        _only_zeros_and_ones(data, spec, "the .npy array")
    flat = np.frombuffer(data, dtype=source)
    array = fit_dtype(flat.reshape(shape, order="F" if fortran_order else "C"), spec)
    return Instances(array if batched else array[np.newaxis], batched)


def tensor_from_bytes(data: bytes, spec: TensorSpec, what: str = "'inputs'") -> Array:
    """Little-endian bytes of the spec's dtype as a flat, writable, native-order array.

    NOTE: a copy, because torch refuses to wrap a read-only buffer safely. Floats must be
    finite and bools 0 or 1, like everywhere else (``registry.codec.fit_dtype``).
    """
    dtype = DTYPES[spec.dtype].numpy
    if dtype.kind == "b":
        _only_zeros_and_ones(data, spec, what)
    return fit_dtype(np.frombuffer(data, dtype=dtype.newbyteorder("<")), spec, what)


def _only_zeros_and_ones(data: bytes | memoryview, spec: TensorSpec, what: str) -> None:
    """NumPy takes any byte as a bool, and torch keeps the byte: 5 would reach the model."""
    if data and np.frombuffer(data, np.uint8).max() > 1:
        raise InvalidInput(
            f"{what} holds bytes other than 0 and 1 for bool",
            expected_shape=list(spec.shape),
            expected_dtype=spec.dtype,
        )


def encode_raw(outputs: Array) -> tuple[bytes, dict[str, str]]:
    shape = ",".join(map(str, outputs.shape))
    return to_little_endian(outputs), {"x-shape": shape, "x-dtype": str(outputs.dtype)}


def encode_npy(outputs: Array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, outputs, allow_pickle=False)
    return buffer.getvalue()


def to_little_endian(array: Array) -> bytes:
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _parse_shape(header: str) -> tuple[int, ...] | None:
    dims = [parse_count(part) for part in header.split(",", MAX_AXES)]
    return as_shape(dims)  # NOTE: None for '-1', '', '²', '1_0' or 5,000 digits
