"""The two native predict routes: the documented contract, and the only code that predicts.

``ENDPOINTS`` names them for the fast path (``registry.api.fastpath``), which finds their
routes in the application's router and calls these same functions and their dependencies
without FastAPI's per-request dependency solving; with it off, FastAPI routes to them.
Either way, what is written here is what serves.
"""

from __future__ import annotations

from collections.abc import Awaitable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.types import Scope

from registry import serving
from registry.api.asgi import header
from registry.api.deps import BodyDep, DefaultModelDep, VersionedModelDep
from registry.api.schemas import (
    BINARY,
    ErrorEnvelope,
    PredictRequest,
    PredictResponse,
    own_body_post,
)
from registry.model import LoadedModel
from registry.settings import Settings

router = APIRouter(tags=["models"])

_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": PredictResponse,
        "content": {"application/octet-stream": BINARY, "application/x-npy": BINARY},
        "description": "Outputs of the resolved version, as JSON or as `Accept` asks",
    },
    400: {"model": ErrorEnvelope, "description": "The body is not JSON"},
    404: {"model": ErrorEnvelope, "description": "Unknown model or version"},
    408: {"model": ErrorEnvelope, "description": "Body slower than REGISTRY_BODY_TIMEOUT_S"},
    413: {
        "model": ErrorEnvelope,
        "description": "Body over REGISTRY_MAX_BODY_BYTES, or more rows than max_batch_size",
    },
    415: {"model": ErrorEnvelope, "description": "Neither JSON, a raw tensor nor .npy"},
    422: {"model": ErrorEnvelope, "description": "Inputs of the wrong shape or dtype"},
    503: {"model": ErrorEnvelope, "description": "Loading, queue full or shutting down"},
    504: {"model": ErrorEnvelope, "description": "Inference timed out"},
}
_PREDICT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()},
        "application/octet-stream": BINARY | {"description": "Raw tensor; X-Shape"},
        "application/x-npy": BINARY,
    },
}
_predict_route = partial(own_body_post, router, responses=_PREDICT_RESPONSES, body=_PREDICT_BODY)


# NOTE: the body comes before the model: no lease is held while a client is still sending.
@_predict_route("/models/{name}/predict")
async def predict(body: BodyDep, model: DefaultModelDep, request: Request) -> Response:
    """Predict with the default version."""
    return PredictionResponse(await _prediction(body, model, request.scope))


@_predict_route("/models/{name}/versions/{version}/predict")
async def predict_version(body: BodyDep, model: VersionedModelDep, request: Request) -> Response:
    """Predict with a version number or an alias; the answer names the concrete version."""
    return PredictionResponse(await _prediction(body, model, request.scope))


def _prediction(body: bytes, model: LoadedModel, scope: Scope) -> Awaitable[serving.Prediction]:
    """What both endpoints await; a plain function, so no coroutine of its own per request.

    The timeout comes from the settings in the lifespan state, as ``SettingsDep`` reads
    them, and the three headers by raw look-up, which costs less than ``request.headers``.
    """
    settings: Settings = scope["state"]["settings"]
    return serving.predict(
        model,
        body,
        timeout_s=settings.request_timeout_s,
        content_type=header(scope, b"content-type"),
        shape=header(scope, b"x-shape"),
        accept=header(scope, b"accept"),
    )


class PredictionResponse(Response):
    """A prediction as sent: what ``Response(body, media_type=..., headers=...)`` sends.

    NOTE: built directly, in the same order: Starlette's general header handling (charset
    rules, duplicate checks) costs more than the rest of building the answer.
    """

    def __init__(self, answer: serving.Prediction) -> None:
        self.status_code = 200
        self.media_type = answer.media_type
        self.background = None
        self.body = answer.body
        raw = []
        for key, value in answer.headers.items():
            raw.append((key.encode("latin-1"), value.encode("latin-1")))
        raw.append((b"content-length", b"%d" % len(answer.body)))
        raw.append((b"content-type", answer.media_type.encode("latin-1")))
        self.raw_headers = raw


ENDPOINTS = (predict, predict_version)
"""The endpoints the fast path fronts, wherever the app's router mounts them."""
