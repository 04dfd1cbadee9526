"""The Open Inference Protocol (KServe V2) tensor format, JSON and binary extension.

A request names tensors with a flat or nested ``data`` list, a ``shape`` and a
``datatype`` (``FP32``...); Triton's binary extension sends the JSON header first
(``Inference-Header-Content-Length`` bytes) and each tensor's raw bytes after it, in the
order of the tensors. ``BYTES`` (the manifest's ``string`` and ``bytes``) is a list of
strings in JSON, and each element as a 4-byte little-endian length and its bytes in the
binary extension, as ``tritonclient`` writes it. Every input the model declares must come,
by its name, and nothing else; ``outputs`` picks which outputs come back, each in JSON or
binary.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from registry.batching import Array, Tensors
from registry.binary import tensor_from_bytes, to_little_endian
from registry.codec import as_shape, instance_shape, parse_count, to_array
from registry.dtypes import DTYPES, MAX_AXES, of_array
from registry.errors import BadRequest, InvalidInput, InvalidJSON
from registry.manifest import OutputSpec, TensorSpec
from registry.named import Decoded

_LENGTH = struct.Struct("<I")


def decode_infer(
    body: bytes,
    header_length: str | None,
    specs: Sequence[TensorSpec],
    outputs: Sequence[OutputSpec],
    max_rows: int,
) -> tuple[dict[str, Any], Decoded]:
    """The request document (id, outputs wanted) and its inputs by name.

    ``header_length`` is the ``Inference-Header-Content-Length`` header as sent. Values
    follow ``registry.codec``'s rules, the native route's; each declared ``shape`` is
    checked (batch size cap included) before its tensor is built. An optional field sent
    as ``null`` counts as absent.
    """
    head, binary = _split(body, header_length)
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if header_length is None and head.lstrip()[:1] == b"{":
            # NOTE: JSON, then something else: most likely binary tensors sent without
            # the header that says where the JSON ends (orjson reports bad UTF-8 at char 0)
            hint = (
                "; if binary tensors follow the JSON, send Inference-Header-Content-Length, "
                "the JSON's length in bytes"
            )
        raise InvalidJSON(f"the inference request is not valid JSON: {exc}{hint}") from exc
    if not isinstance(document, dict):
        raise InvalidInput("the inference request must be a JSON object")
    return document, decode_document(document, binary, specs, outputs, max_rows=max_rows)


def decode_document(
    document: dict[str, Any],
    binary: bytes,
    specs: Sequence[TensorSpec],
    outputs: Sequence[OutputSpec],
    *,
    max_rows: int,
) -> Decoded:
    """The inputs of a request as the JSON document names them, each from its ``data`` or
    from its ``binary_data_size`` bytes of ``binary`` in turn (gRPC's raw contents come
    this way too)."""
    _check_request(document, outputs)
    tensors = _input_tensors(document.get("inputs"), specs)
    sizes = [_binary_size(tensor) for tensor in tensors.values()]
    if binary and not any(size is not None for size in sizes):
        raise InvalidInput(
            f"{len(binary)} bytes follow the JSON header, but the inputs have no "
            "'binary_data_size' parameter"
        )
    if sum(size or 0 for size in sizes) != len(binary):
        raise InvalidInput(
            f"the inputs' 'binary_data_size' add up to {sum(size or 0 for size in sizes)}, "
            f"but {len(binary)} bytes follow the JSON header"
        )
    by_name = {spec.name: spec for spec in specs}
    arrays: dict[str, tuple[Array, bool]] = {}
    offset = 0
    for (name, tensor), size in zip(tensors.items(), sizes, strict=True):
        part = None if size is None else binary[offset : offset + size]
        arrays[name] = _input_array(tensor, by_name[name], part, max_rows=max_rows)
        offset += size or 0
    if len({(batched, len(array)) for array, batched in arrays.values()}) > 1:
        raise InvalidInput("the inputs must all be one instance, or all batches of one length")
    batched = arrays[specs[0].name][1]
    return Decoded({spec.name: arrays[spec.name][0] for spec in specs}, batched)


def _input_tensors(inputs: object, specs: Sequence[TensorSpec]) -> dict[str, dict[str, Any]]:
    """The request's input tensors by name, in the order sent: each declared one once."""
    names = [spec.name for spec in specs]
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise InvalidInput(
            f"'inputs' must be a list of tensor objects, exactly one input per name in {names}"
        )
    tensors: dict[str, dict[str, Any]] = {}
    for tensor in inputs:
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidInput("each input's 'name' must be a string")
        if name not in names:
            raise InvalidInput(f"unknown input {name!r}; the model takes {names}")
        if name in tensors:
            raise InvalidInput(f"input {name!r} is given twice")
        tensors[name] = tensor
    if missing := [name for name in names if name not in tensors]:
        raise InvalidInput(f"missing input {missing[0]!r}; the model takes {names}")
    return tensors


def _binary_size(tensor: dict[str, Any]) -> int | None:
    size = _parameters(tensor, "the input's").get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise InvalidInput(f"'binary_data_size' must be a non-negative integer, not {_short(size)}")
    if size is not None and tensor.get("data") is not None:
        raise InvalidInput("the input has both 'data' and 'binary_data_size'")
    return size


def _input_array(
    tensor: dict[str, Any], spec: TensorSpec, binary: bytes | None, *, max_rows: int
) -> tuple[Array, bool]:
    """One input tensor, with a batch axis, and whether it was sent as a batch."""
    what = f"input {spec.name!r}"
    datatype = tensor.get("datatype")
    if datatype != DTYPES[spec.dtype].v2:
        raise InvalidInput(
            f"{what} has datatype {_short(datatype)}; the model takes {DTYPES[spec.dtype].v2}",
            expected_dtype=DTYPES[spec.dtype].v2,
        )
    declared = tensor.get("shape")
    shape = as_shape(declared) if isinstance(declared, list) else None
    if shape is None:
        raise InvalidInput(
            f"the 'shape' of {what} must be a list of at most {MAX_AXES} non-negative integers"
        )
    batched = instance_shape(shape, spec, max_rows=max_rows, what=what)
    count = math.prod(shape)
    if binary is None:
        flat = _json_data(tensor.get("data"), count, spec, what)
    elif spec.text:
        flat = _binary_elements(binary, count, spec, what)
    else:
        flat = _binary_data(binary, count, spec, what)
    array = flat.reshape(shape)
    return (array if batched else array[np.newaxis]), batched


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


def _check_request(document: dict[str, Any], outputs: Sequence[OutputSpec]) -> None:
    """``id``, ``parameters`` and ``outputs`` have the protocol's types, or a 422; the
    outputs asked for are the model's."""
    if not isinstance(document.get("id"), str | None):
        raise InvalidInput("the request's 'id' must be a string")
    parameters = _parameters(document, "the request's")
    if not isinstance(parameters.get("binary_data_output"), bool | None):
        raise InvalidInput("the request's 'binary_data_output' must be true or false")
    wanted = document.get("outputs")
    if wanted is None:
        return
    if not isinstance(wanted, list) or not all(_is_output(o) for o in wanted):
        raise InvalidInput(
            "'outputs' must be a list of objects, each with an optional string 'name' and "
            "optional 'parameters' (an object; 'binary_data' true or false)"
        )
    names = [o.name for o in outputs]
    asked = [output.get("name") for output in wanted]
    for name in asked:
        if name is None and len(names) > 1:
            raise InvalidInput(f"each of 'outputs' needs a 'name': the model gives {names}")
        if name is not None and name not in names:
            raise InvalidInput(f"unknown output {name!r}; the model gives {names}")
    # NOTE: a nameless entry is the model's one output, by name or not
    named = [names[0] if name is None else name for name in asked]
    if duplicates := sorted({n for n in named if named.count(n) > 1}):
        raise InvalidInput(f"output {duplicates[0]!r} is asked for twice")
    for output, name in zip(wanted, named, strict=True):
        if "classification" in (output.get("parameters") or {}):
            # NOTE: answering the whole tensor instead would hand the client another
            # datatype and shape than it asked for
            raise InvalidInput(
                f"output {name!r} asks for the classification extension, which this server "
                "does not offer: ask for the output itself"
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


def _json_data(data: object, count: int, spec: TensorSpec, what: str) -> Array:
    if not isinstance(data, list):
        raise InvalidInput(
            f"the 'data' of {what} must be a list of {'strings' if spec.text else 'numbers'}, flat "
            "or nested, or the input needs a 'binary_data_size' parameter",
            expected_shape=list(spec.shape),
        )
    if len(data) > count:  # NOTE: before NumPy reads a list far longer than the shape
        raise InvalidInput(f"the 'data' of {what} has more than the {count} values its shape holds")
    if spec.text:
        array = _json_strings(data, spec, what)
    else:
        array = to_array(data, spec, f"the 'data' of {what}")
    if array.size != count:
        raise InvalidInput(f"the 'data' of {what} has {array.size} values; its shape holds {count}")
    return array.reshape(-1)


def _json_strings(data: list[Any], spec: TensorSpec, what: str) -> Array:
    """``BYTES`` in JSON: a flat list of strings, as ``tritonclient`` sends it (a ``bytes``
    input takes their UTF-8)."""
    flat: list[str | bytes] = []
    for item in data:
        if not isinstance(item, str):
            raise InvalidInput(
                f"the 'data' of {what} must be a flat list of strings for BYTES, "
                f"not hold {_short(item)}"
            )
        flat.append(item if spec.dtype == "string" else item.encode())
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def _binary_data(binary: bytes, count: int, spec: TensorSpec, what: str) -> Array:
    expected = count * DTYPES[spec.dtype].numpy.itemsize
    if len(binary) != expected:
        raise InvalidInput(
            f"the 'binary_data_size' of {what} is {len(binary)} bytes; its shape of "
            f"{DTYPES[spec.dtype].v2} is {expected} bytes"
        )
    return tensor_from_bytes(binary, spec, what)


def _binary_elements(binary: bytes, count: int, spec: TensorSpec, what: str) -> Array:
    """``BYTES`` in the binary extension: each element a 4-byte little-endian length and
    that many bytes, exactly ``count`` of them filling the tensor's part."""
    flat: list[str | bytes] = []
    offset = 0
    while offset < len(binary) and len(flat) < count:
        if offset + 4 > len(binary):
            raise InvalidInput(f"the BYTES data of {what} ends inside an element's length")
        (length,) = _LENGTH.unpack_from(binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise InvalidInput(f"an element of {length} bytes runs past the BYTES data of {what}")
        element = binary[offset : offset + length]
        offset += length
        if spec.dtype == "string":
            try:
                flat.append(element.decode())
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"{what} holds text that is not UTF-8: {exc}") from exc
        else:
            flat.append(element)
    if len(flat) != count or offset != len(binary):
        raise InvalidInput(
            f"the BYTES data of {what} holds {len(flat)} elements in {offset} of its "
            f"{len(binary)} bytes; its shape holds {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = flat
    return array


def _short(value: object) -> str:
    """A client's value for a message: scalars shown (cut short), containers named."""
    if not isinstance(value, str | int | float | None):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def encode_infer(
    model: str,
    version: str,
    request: dict[str, Any],
    outputs: Tensors,
    batched: bool,
    specs: Sequence[OutputSpec],
) -> tuple[bytes, int | None]:
    """The response body and, when any output goes as binary, the JSON header's length.

    The outputs are those the request names (all of them by default), each in binary
    where its ``binary_data`` or the request's ``binary_data_output`` says so.
    """
    default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    wanted = request.get("outputs") or [{"name": spec.name} for spec in specs]
    tensors: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for output in wanted:
        name = output.get("name") or specs[0].name
        array = outputs[name]
        answer = as_sent(array, batched)
        text = array.dtype.kind == "O"
        tensor: dict[str, Any] = {
            "name": name,
            "shape": list(answer.shape),
            # NOTE: ``LoadedModel`` fails a pass whose dtype is outside the table
            "datatype": "BYTES" if text else of_array(answer.dtype).v2,
        }
        parameters = output.get("parameters") or {}
        binary = parameters.get("binary_data")  # NOTE: null counts as absent
        if default if binary is None else binary:
            raw = elements_bytes(answer) if text else to_little_endian(answer)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        elif text:
            tensor["data"] = [_as_text(item) for item in answer.reshape(-1)]
        else:
            tensor["data"] = answer.reshape(-1)
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.get("id") is not None:
        document["id"] = request["id"]
    if not parts:
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), None
    head = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return head + b"".join(parts), len(head)


def as_sent(array: Array, batched: bool) -> Array:
    """An output as the request's inputs came: all rows if batched, else the one row.

    NOTE: ``[0, ...]``, not ``[0]``: an array even where the row is one element of an
    object array (a ``string`` output of shape ``[]``), which ``[0]`` would give as a
    bare ``str``.
    """
    return array if batched else array[0, ...]


def elements_bytes(array: Array) -> bytes:
    elements = [item.encode() if isinstance(item, str) else item for item in array.reshape(-1)]
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def _as_text(item: object) -> object:
    """A ``BYTES`` element for JSON, which carries text only: bytes as UTF-8, undecodable
    ones with replacement characters (ask for ``binary_data`` to get them exactly)."""
    return item.decode(errors="replace") if isinstance(item, bytes) else item
