"""The Open Inference Protocol (KServe V2) tensor format, JSON and binary extension.

A request names tensors with a flat or nested ``data`` list, a ``shape`` and a
``datatype`` (``FP32``...); Triton's binary extension sends the JSON header first
(``Inference-Header-Content-Length`` bytes) and each tensor's raw bytes after it. The
models here take one input tensor, so one input is expected, whatever its name.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from registry.batching import Array
from registry.binary import tensor_from_bytes, to_little_endian
from registry.codec import MAX_AXES, Instances, as_shape, instance_shape, parse_count, to_array
from registry.dtypes import DTYPES, of_array
from registry.errors import BadRequest, InvalidInput, InvalidJSON
from registry.manifest import TensorSpec

INPUT, OUTPUT = "input", "output"


def decode_infer(
    body: bytes, header_length: str | None, spec: TensorSpec, *, max_rows: int
) -> tuple[dict[str, Any], Instances]:
    """The request document (id, outputs wanted) and its one input as instances.

    ``header_length`` is the ``Inference-Header-Content-Length`` header as sent. Values
    follow ``registry.codec``'s rules, the native route's; the declared ``shape`` is
    checked (batch size cap included) before the tensor is built. An optional field sent
    as ``null`` counts as absent.
    """
    head, binary = _split(body, header_length)
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the inference request is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInput("the inference request must be a JSON object")
    _check_request(document)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"expected exactly one input tensor (name {INPUT!r})")
    tensor = inputs[0]
    if not isinstance(tensor.get("name", ""), str | None):
        raise InvalidInput("the input's 'name' must be a string")
    parameters = _parameters(tensor, "the input's")
    datatype = tensor.get("datatype")
    if datatype != DTYPES[spec.dtype].v2:
        raise InvalidInput(
            f"input datatype is {_short(datatype)}; the model takes {DTYPES[spec.dtype].v2}",
            expected_dtype=DTYPES[spec.dtype].v2,
        )
    declared = tensor.get("shape")
    shape = as_shape(declared) if isinstance(declared, list) else None
    if shape is None:
        raise InvalidInput(
            f"input 'shape' must be a list of at most {MAX_AXES} non-negative integers"
        )
    batched = instance_shape(shape, spec, max_rows=max_rows, what="input")
    count = math.prod(shape)
    size = parameters.get("binary_data_size")
    if size is None:
        flat = _json_data(tensor.get("data"), binary, count, spec)
    else:
        flat = _binary_data(size, binary, count, tensor.get("data") is not None, spec)
    array = flat.reshape(shape)
    return document, Instances(array if batched else array[np.newaxis], batched)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensors after it (400 if the length is not sane)."""
    if header_length is None:
        return body, b""
    length = parse_count(header_length)
    if length is None:
        raise BadRequest(
            "'Inference-Header-Content-Length' must be the JSON header's length in bytes, "
            f"a non-negative integer, not {header_length[:40]!r}"
        )
    if length > len(body):
        raise BadRequest(
            f"'Inference-Header-Content-Length' is {length} but the body has only {len(body)} bytes"
        )
    if length == 0:  # NOTE: as before, and as Triton reads it: no binary part
        return body, b""
    return body[:length], body[length:]


def _check_request(document: dict[str, Any]) -> None:
    """``id``, ``parameters`` and ``outputs`` have the protocol's types, or a 422."""
    if not isinstance(document.get("id"), str | None):
        raise InvalidInput("the request's 'id' must be a string")
    _parameters(document, "the request's")
    outputs = document.get("outputs")
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(_is_output(o) for o in outputs):
        raise InvalidInput(
            "'outputs' must be a list of objects, each with an optional string 'name' and "
            "optional 'parameters' (an object; 'binary_data' true or false)"
        )


def _is_output(wanted: object) -> bool:
    if not isinstance(wanted, dict) or not isinstance(wanted.get("name"), str | None):
        return False
    parameters = wanted.get("parameters")
    if parameters is None:
        return True
    return isinstance(parameters, dict) and isinstance(parameters.get("binary_data"), bool | None)


def _parameters(holder: dict[str, Any], whose: str) -> dict[str, Any]:
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{whose} 'parameters' must be an object")
    return parameters


def _json_data(data: object, binary: bytes, count: int, spec: TensorSpec) -> Array:
    if binary:
        raise InvalidInput(
            f"{len(binary)} bytes follow the JSON header, but the input has no "
            "'binary_data_size' parameter"
        )
    if not isinstance(data, list):
        raise InvalidInput(
            "input 'data' must be a list of numbers, flat or nested, "
            "or the input needs a 'binary_data_size' parameter",
            expected_shape=list(spec.shape),
        )
    if len(data) > count:  # NOTE: before NumPy reads a list far longer than the shape
        raise InvalidInput(f"input 'data' has more than the {count} values its shape holds")
    array = to_array(data, spec, "input 'data'")
    if array.size != count:
        raise InvalidInput(f"input 'data' has {array.size} values; its shape holds {count}")
    return array.reshape(-1)


def _binary_data(
    size: object, binary: bytes, count: int, has_data: bool, spec: TensorSpec
) -> Array:
    if type(size) is not int or size < 0:
        raise InvalidInput(f"'binary_data_size' must be a non-negative integer, not {_short(size)}")
    if has_data:
        raise InvalidInput("the input has both 'data' and 'binary_data_size'")
    if size != len(binary):
        raise InvalidInput(
            f"'binary_data_size' is {size}, but {len(binary)} bytes follow the JSON header"
        )
    expected = count * DTYPES[spec.dtype].numpy.itemsize
    if size != expected:
        raise InvalidInput(
            f"'binary_data_size' is {size} bytes; the input's shape of "
            f"{DTYPES[spec.dtype].v2} is {expected} bytes"
        )
    return tensor_from_bytes(binary, spec, "input")


def _short(value: object) -> str:
    """A client's value for a message: scalars shown (cut short), containers named."""
    if not isinstance(value, str | int | float | None):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def encode_infer(
    model: str, version: str, request: dict[str, Any], outputs: Array, batched: bool
) -> tuple[bytes, int | None]:
    """The response body and, when the client asked for binary output, its JSON length."""
    answer = outputs if batched else outputs[0]
    wanted = request.get("outputs") or [{}]
    binary = bool((wanted[0].get("parameters") or {}).get("binary_data", False))
    tensor: dict[str, Any] = {
        "name": wanted[0].get("name") or OUTPUT,
        "shape": list(answer.shape),
        # NOTE: ``LoadedModel.forward_blocking`` fails a pass whose dtype is outside the table
        "datatype": of_array(answer.dtype).v2,
    }
    document: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": [tensor]}
    if request.get("id") is not None:
        document["id"] = request["id"]
    if not binary:
        tensor["data"] = answer.reshape(-1)
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), None
    raw = to_little_endian(answer)
    tensor["parameters"] = {"binary_data_size": len(raw)}
    head = orjson.dumps(document)
    return head + raw, len(head)
