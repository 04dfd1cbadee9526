"""The public JSON shapes, for the OpenAPI document and the metadata routes.

The predict route does not validate through these (the body is parsed with orjson and
NumPy for speed); they still describe it so ``/docs`` shows the contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

Nested = list[Any] | float | int | bool | str | dict[str, Any]


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": [[0.0, 1.0, 2.0]]}, {"inputs": [0.0, 1.0]}]}
    )

    inputs: Nested = Field(
        description="One instance of the model's declared shape, or a batch of them "
        "(declared shape with a leading batch axis); for a model of several inputs, an "
        "object naming each, or a list of such objects. Text is a JSON string, a binary "
        'value (an image) {"b64": "<base64>"}.'
    )


class PredictResponse(BaseModel):
    model: str
    version: str = Field(description="The concrete version that answered (never an alias).")
    outputs: Nested = Field(
        description="One instance's output, or one per batch instance; an object naming "
        "each output where the model has several."
    )
    labels: list[str] | str | dict[str, Any] | None = Field(
        default=None, description="Argmax label(s), present where the model declares labels."
    )


class TensorSchema(BaseModel):
    name: str
    shape: list[int] = Field(description="One instance's shape; -1 for a length that varies")
    dtype: str


class OutputSchema(BaseModel):
    name: str
    shape: list[int] | None = Field(description="As declared; null: learned at warm-up")
    dtype: str | None
    labels: list[str] | None = None


class VersionInfo(BaseModel):
    version: str
    format: str
    state: str = Field(description="unloaded | loading | ready | failed | evicting | draining")
    error: str | None = None
    sha256: str | None = None
    load_ms: float | None = None
    warmup_ms: float | None = None
    memory_bytes: int | None = None
    in_flight: int = 0
    queue_depth: int = 0
    load: str = Field(default="eager", description="eager (at start-up) | lazy (when asked)")
    resident: bool = Field(default=False, description="Never evicted to make room")
    last_eviction: str | None = Field(
        default=None, description="Why it last left memory: memory_budget | unload"
    )


class ModelInfo(BaseModel):
    name: str
    description: str
    input: TensorSchema | None = Field(description="The one input, where there is one")
    labels: list[str] | None = Field(description="The one output's labels, where it has any")
    inputs: list[TensorSchema]
    outputs: list[OutputSchema]
    handler: str | None = Field(description="The default version's handler, if any")
    device: str
    instances: int = Field(description="Forward passes of a version that may run at once")
    default_version: str
    aliases: dict[str, str]
    versions: list[VersionInfo]
    state: str = Field(
        description="failed or loading if any version is, else ready if any is, else "
        "evicting or unloaded"
    )


class ModelList(BaseModel):
    models: list[ModelInfo]
    loading: list[str] = Field(
        default=[], description="Versions a reload in progress is loading (model:version)"
    )
    draining: list[str] = Field(
        default=[], description="Retired versions still finishing requests (model:version)"
    )
    manifest_sha256: str | None = Field(
        default=None,
        description="Fingerprint of the manifest this process serves (its content, not its "
        "layout): equal on every replica once a change has reached them all",
    )


class Readiness(BaseModel):
    status: str
    models: int
    versions: int


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    error: ErrorBody


BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
"""A bytes body or answer in the OpenAPI document."""

Route = Callable[..., Awaitable[Response]]


def own_body_post(
    router: APIRouter,
    path: str,
    *,
    responses: Mapping[int | str, dict[str, Any]],
    body: dict[str, Any],
) -> Callable[[Route], Route]:
    """A POST route that reads its own body (orjson, raw bytes), yet documents what it takes
    (``body``, an OpenAPI ``requestBody``) and answers."""
    return router.post(
        path, response_model=None, responses=dict(responses), openapi_extra={"requestBody": body}
    )
