"""The Open Inference Protocol (KServe V2) tensor format, JSON and binary extension.

A request names tensors with a flat or nested ``data`` list, a ``shape`` and a
``datatype`` (``FP32``...); Triton's binary extension sends the JSON header first
(``Inference-Header-Content-Length`` bytes) and each tensor's raw bytes after it. The
models here take one input tensor, so one input is expected, whatever its name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from registry.batching import Array
from registry.binary import from_little_endian, to_little_endian
from registry.codec import NUMPY_DTYPES, Instances, shape_instances
from registry.errors import InvalidInput, InvalidJSON
from registry.manifest import TensorSpec

DATATYPES = {
    "float32": "FP32",
    "float64": "FP64",
    "float16": "FP16",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}
INPUT, OUTPUT = "input", "output"


def decode_infer(
    body: bytes, header_length: int | None, spec: TensorSpec
) -> tuple[dict[str, Any], Instances]:
    """The request document (id, outputs wanted) and its one input as instances."""
    head, binary = (body[:header_length], body[header_length:]) if header_length else (body, b"")
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the inference request is not valid JSON: {exc}") from exc
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"expected exactly one input tensor (name {INPUT!r})")
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    if datatype != DATATYPES[spec.dtype]:
        raise InvalidInput(
            f"input datatype is {datatype!r}; the model takes {DATATYPES[spec.dtype]}",
            expected_dtype=DATATYPES[spec.dtype],
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise InvalidInput("input 'shape' must be a list of non-negative integers")
    dtype = NUMPY_DTYPES[spec.dtype]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    try:
        if size is not None:
            flat = from_little_endian(binary[:size], dtype)
        else:
            flat = np.asarray(tensor.get("data"), dtype=dtype).reshape(-1)
        array = flat.reshape(shape)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input data does not fit shape {shape} of {datatype}: {exc}") from exc
    return document, shape_instances(array, spec)


def encode_infer(
    model: str, version: str, request: dict[str, Any], outputs: Array, batched: bool
) -> tuple[bytes, int | None]:
    """The response body and, when the client asked for binary output, its JSON length."""
    answer = outputs if batched else outputs[0]
    wanted = request.get("outputs") or [{}]
    binary = bool((wanted[0].get("parameters") or {}).get("binary_data", False))
    tensor: dict[str, Any] = {
        "name": wanted[0].get("name", OUTPUT),
        "shape": list(answer.shape),
        "datatype": DATATYPES.get(str(answer.dtype), "FP32"),
    }
    document: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": [tensor]}
    if "id" in request:
        document["id"] = request["id"]
    if not binary:
        tensor["data"] = answer.reshape(-1)
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), None
    raw = to_little_endian(answer)
    tensor["parameters"] = {"binary_data_size": len(raw)}
    head = orjson.dumps(document)
    return head + raw, len(head)
