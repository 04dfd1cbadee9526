"""Tensors as bytes: raw little-endian with an ``X-Shape`` header, or ``.npy``.

For clients that already hold arrays, JSON is pure overhead: 64 floats are ~1 KB of text
to print and parse, 256 bytes raw. Inputs must already have the model's dtype (nothing is
guessed from bytes); ``.npy`` inputs may be any dtype of the same kind (float64 for float32).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from registry.batching import Array
from registry.codec import NUMPY_DTYPES, Instances, shape_instances
from registry.errors import InvalidInput
from registry.manifest import TensorSpec

RAW = "application/octet-stream"
NPY = "application/x-npy"


def decode_raw(body: bytes, shape_header: str | None, spec: TensorSpec) -> Instances:
    if not shape_header:
        raise InvalidInput(
            "a raw tensor body needs an 'X-Shape' header, e.g. 'X-Shape: 1,64'",
            expected_shape=list(spec.shape),
        )
    try:
        shape = tuple(int(part) for part in shape_header.split(","))
    except ValueError:
        raise InvalidInput(
            f"'X-Shape' must be comma-separated integers, not {shape_header!r}",
            expected_shape=list(spec.shape),
        ) from None
    dtype = NUMPY_DTYPES[spec.dtype]
    expected_bytes = int(np.prod(shape)) * dtype.itemsize
    if any(n < 0 for n in shape) or len(body) != expected_bytes:
        raise InvalidInput(
            f"X-Shape {list(shape)} of {spec.dtype} is {expected_bytes} bytes; "
            f"the body has {len(body)}",
            expected_shape=list(spec.shape),
            expected_dtype=spec.dtype,
        )
    return shape_instances(from_little_endian(body, dtype).reshape(shape), spec)


def decode_npy(body: bytes, spec: TensorSpec) -> Instances:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"the body is not a .npy array: {exc}") from exc
    dtype = NUMPY_DTYPES[spec.dtype]
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise InvalidInput(
            f".npy array of {array.dtype} does not cast to {spec.dtype}",
            expected_shape=list(spec.shape),
            expected_dtype=spec.dtype,
        )
    return shape_instances(array.astype(dtype, copy=False), spec)


def encode_raw(outputs: Array) -> tuple[bytes, dict[str, str]]:
    shape = ",".join(map(str, outputs.shape))
    return to_little_endian(outputs), {"X-Shape": shape, "X-Dtype": str(outputs.dtype)}


def encode_npy(outputs: Array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, outputs, allow_pickle=False)
    return buffer.getvalue()


def from_little_endian(data: bytes, dtype: np.dtype[Any]) -> Array:
    """A flat, writable array in native byte order.

    NOTE: a copy, because torch refuses to wrap a read-only buffer safely.
    """
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)


def to_little_endian(array: Array) -> bytes:
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
