"""The baseline: how the common FastAPI tutorial serves a model.

A pydantic body validated number by number, ``torch.tensor`` from lists, the forward pass
inline in an ``async def`` endpoint (on the event loop), ``.tolist()`` and FastAPI's JSON
encoding. Weights and shapes come from ``BENCH_MODELS`` (JSON: name → [widths, path]).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from registry.examples.mlp import MLP


class PredictRequest(BaseModel):
    inputs: list[list[float]]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    models = {}
    for name, (widths, path) in json.loads(os.environ["BENCH_MODELS"]).items():
        model = MLP(widths)
        model.load_state_dict(torch.load(path, weights_only=True))
        models[name] = model.eval()
    app.state.models = models
    yield
    models.clear()


app = FastAPI(lifespan=lifespan)


@app.post("/models/{name}/predict")
async def predict(name: str, body: PredictRequest, request: Request) -> dict[str, Any]:
    model = request.app.state.models.get(name)
    if model is None:
        raise HTTPException(404, "no such model")
    with torch.no_grad():
        outputs = model(torch.tensor(body.inputs))
    return {"model": name, "outputs": outputs.tolist()}


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ready"}
