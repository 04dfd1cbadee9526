"""Every tensor dtype the server knows, under each of its names: one table.

The manifest names a dtype (``float32``), NumPy decodes into it, torch computes in it and
the Open Inference Protocol calls it a datatype (``FP32``). Keeping the four names in one
row means a dtype cannot be half-supported. Text (``string``) and binary values (``bytes``,
an image) are NumPy object arrays of ``str`` and ``bytes``: both are the protocol's
``BYTES``, and no torch dtype holds them (a handler turns them into tensors). No torch
import here: ``registry validate`` and the manifest stay cheap; ``torch`` is resolved on
first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


MAX_AXES = 64
"""NumPy's limit on an array's dimensions: no request may nest deeper."""


@dataclass(frozen=True, slots=True)
class DType:
    name: str
    """As the manifest writes it."""
    numpy: np.dtype[Any]
    v2: str
    """The Open Inference Protocol's datatype."""

    @property
    def torch(self) -> torch.dtype:
        module = importlib.import_module("torch")
        dtype: torch.dtype = getattr(module, self.name)
        return dtype


DTYPES: dict[str, DType] = {
    row.name: row
    for row in (
        DType("float32", np.dtype(np.float32), "FP32"),
        DType("float64", np.dtype(np.float64), "FP64"),
        DType("float16", np.dtype(np.float16), "FP16"),
        DType("int64", np.dtype(np.int64), "INT64"),
        DType("int32", np.dtype(np.int32), "INT32"),
        DType("int16", np.dtype(np.int16), "INT16"),
        DType("int8", np.dtype(np.int8), "INT8"),
        DType("uint8", np.dtype(np.uint8), "UINT8"),
        DType("bool", np.dtype(np.bool_), "BOOL"),
        DType("string", np.dtype(object), "BYTES"),
        DType("bytes", np.dtype(object), "BYTES"),
    )
}
NUMERIC = {name: row for name, row in DTYPES.items() if row.numpy.kind != "O"}
_BY_NUMPY = {row.numpy: row for row in NUMERIC.values()}


def of_array(dtype: np.dtype[Any]) -> DType:
    """The numeric row for an array's dtype (any byte order); ``KeyError`` names one outside
    it. Object arrays have none: whether they hold text or bytes is the manifest's to say."""
    row = _BY_NUMPY.get(dtype.newbyteorder("="))
    if row is None:
        raise KeyError(f"dtype {dtype} has no place in the protocol's datatypes")
    return row
