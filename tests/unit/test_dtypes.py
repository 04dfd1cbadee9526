"""The one dtype table agrees with the manifest, NumPy, torch and the protocol."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

from registry.dtypes import DTYPES, NUMERIC, of_array
from registry.manifest import DType

# NOTE: the Open Inference Protocol's tensor datatypes, as its specification lists them
PROTOCOL_DATATYPES = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
}  # fmt: skip


def test_the_table_holds_exactly_the_manifest_dtypes() -> None:
    assert tuple(DTYPES) == get_args(DType)


@pytest.mark.parametrize("name", list(NUMERIC))
def test_each_row_names_one_dtype_four_ways(name: str) -> None:
    row = DTYPES[name]
    assert row.numpy == np.dtype(name if name != "bool" else np.bool_)
    assert row.v2 in PROTOCOL_DATATYPES
    tensor = torch.from_numpy(np.zeros(3, dtype=row.numpy))
    assert tensor.dtype == row.torch
    assert tensor.element_size() == row.numpy.itemsize
    assert of_array(row.numpy) is row
    assert of_array(row.numpy.newbyteorder(">")) is row  # NOTE: byte order is not a dtype


def test_the_protocol_names_are_one_to_one_for_numbers() -> None:
    assert len({row.v2 for row in NUMERIC.values()}) == len(NUMERIC)


@pytest.mark.parametrize("name", ["string", "bytes"])
def test_text_and_bytes_are_object_arrays_and_the_protocols_bytes(name: str) -> None:
    """Both are ``BYTES`` on the wire; the manifest says whether a value is text."""
    row = DTYPES[name]
    assert row.numpy == np.dtype(object)
    assert row.v2 == "BYTES"
    assert name not in NUMERIC


@pytest.mark.parametrize("dtype", [np.complex64, np.uint16, np.str_, np.object_])
def test_a_dtype_outside_the_table_is_refused_not_guessed(dtype: type) -> None:
    with pytest.raises(KeyError, match="no place"):
        of_array(np.dtype(dtype))
