"""The Open Inference Protocol's JSON shapes, for the OpenAPI document.

``infer`` does not validate through these (``registry.v2`` parses the body with orjson and
checks every field itself, for speed and for the binary extension); they describe the
protocol so that ``/docs``, generated clients and fuzzers see the real contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from registry.api.schemas import BINARY, Nested

Parameters = dict[str, Any]


class V2Error(BaseModel):
    error: str = Field(description="What went wrong; the protocol fixes this shape.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class ServerReadiness(BaseModel):
    ready: bool


class ModelReadiness(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="FP32, FP64, FP16, INT64, INT32, INT16, INT8, UINT8, BOOL")
    shape: list[int] = Field(description="-1 for an axis of any length (the batch axis)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(
        default=None, description="binary_data_size: the tensor's bytes follow the JSON header"
    )
    data: Nested | None = Field(default=None, description="Row-major values, flat or nested")


class RequestedOutput(BaseModel):
    name: str
    parameters: Parameters | None = Field(
        default=None, description="binary_data: true to get the tensor as raw bytes"
    )


class InferRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the protocol's error body at ``statuses``."""
    return {status: {"model": V2Error} for status in statuses}


INFER_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": InferRequest.model_json_schema()},
        "application/octet-stream": BINARY
        | {
            "description": "Triton's binary extension: the JSON header "
            "(Inference-Header-Content-Length bytes), then each tensor's bytes"
        },
    },
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferResponse,
        "content": {"application/octet-stream": BINARY},
        "description": "JSON, or the binary extension when an output asks for binary_data",
    },
    **errors(400, 404, 408, 413, 415, 422, 503, 504),
}
