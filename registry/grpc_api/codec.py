"""``ModelInferRequest`` to named arrays, and named arrays to ``ModelInferResponse``.

A request is read as the JSON document the V2 REST route reads (``registry.v2``): raw
contents as that document's binary part, typed contents as its ``data``. So both
protocols check every input the same way and refuse it with the same message. Answers
always go back as raw contents (little-endian elements; a ``BYTES`` element as a 4-byte
length and its bytes), which is what ``tritonclient`` reads fastest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from registry.batching import Tensors
from registry.binary import to_little_endian
from registry.dtypes import of_array
from registry.errors import InvalidInput
from registry.grpc_api import open_inference_pb2 as pb
from registry.manifest import OutputSpec, TensorSpec
from registry.named import Decoded
from registry.v2 import as_sent, decode_document, elements_bytes

TYPED_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
"""Where each datatype's elements go in ``InferTensorContents`` (``FP16`` has no field:
it comes raw only; ``BYTES`` is ``bytes_contents``)."""


def decode_request(
    request: pb.ModelInferRequest,
    specs: Sequence[TensorSpec],
    outputs: Sequence[OutputSpec],
    max_rows: int,
) -> tuple[dict[str, Any], Decoded]:
    """The request as a V2 document (id, outputs wanted) and its inputs by name."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per "
            "input, in their order, or none"
        )
    tensors: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if raw and tensor.contents.ByteSize():
            raise InvalidInput(
                f"input {tensor.name!r} is sent both in contents and in raw_input_contents: "
                "with raw_input_contents, no input may have contents"
            )
        part = raw[index] if raw else _typed_part(tensor)
        if part is None:
            entry["data"] = _typed_data(tensor)
        else:
            entry["parameters"] = {"binary_data_size": len(part)}
            parts.append(part)
        tensors.append(entry)
    document: dict[str, Any] = {"inputs": tensors}
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [_output(output) for output in request.outputs]
    decoded = decode_document(document, b"".join(parts), specs, outputs, max_rows=max_rows)
    return document, decoded


def _output(wanted: pb.ModelInferRequest.InferRequestedOutputTensor) -> dict[str, Any]:
    """An output asked for, as the REST document names it: only the parameter that
    changes what is answered (``classification``) goes along, for the same refusal."""
    if "classification" in wanted.parameters:
        return {"name": wanted.name, "parameters": {"classification": True}}
    return {"name": wanted.name}


def _typed_part(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes | None:
    """``BYTES`` elements sent typed, laid out as raw contents; ``None`` for the others."""
    if tensor.datatype != "BYTES":
        return None
    elements = np.empty(len(tensor.contents.bytes_contents), dtype=object)
    elements[:] = list(tensor.contents.bytes_contents)
    return elements_bytes(elements)


def _typed_data(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    field = TYPED_CONTENTS.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            f"input {tensor.name!r} of {tensor.datatype or 'no datatype'} has no typed "
            "contents; send it in raw_input_contents"
        )
    return list(getattr(tensor.contents, field))


def encode_response(
    model: str,
    version: str,
    document: dict[str, Any],
    outputs: Tensors,
    batched: bool,
    specs: Sequence[OutputSpec],
) -> pb.ModelInferResponse:
    """The outputs the request names (all by default), each as raw contents."""
    wanted = [output["name"] for output in document.get("outputs", ())]
    response = pb.ModelInferResponse(
        model_name=model, model_version=version, id=document.get("id", "")
    )
    for name in wanted or [spec.name for spec in specs]:
        array = outputs[name]
        answer = as_sent(array, batched)
        text = array.dtype.kind == "O"
        response.outputs.add(
            name=name,
            datatype="BYTES" if text else of_array(answer.dtype).v2,
            shape=list(answer.shape),
        )
        response.raw_output_contents.append(
            elements_bytes(answer) if text else to_little_endian(answer)
        )
    return response
