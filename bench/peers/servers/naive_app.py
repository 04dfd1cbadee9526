"""``naive`` / ``naive-async``: FastAPI + uvicorn the way the common tutorial writes it.

    BENCH_MODEL=tiny uvicorn bench.peers.servers.naive_app:app --port 18000
    BENCH_MODEL=tiny BENCH_ASYNC=1 uvicorn bench.peers.servers.naive_app:app ...

The model (eager, from the state dict) is loaded once at start-up into ``app.state``.
``POST /predict {"inputs": [[...]]}`` -> ``{"outputs": [[...]]}``, a pydantic body, no
batching. Sync variant: a ``def`` endpoint, which FastAPI runs in its thread pool. Async
variant: an ``async def`` endpoint calling the model directly, on the event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from pydantic import BaseModel

from bench.peers import models

MODEL = os.environ.get("BENCH_MODEL", "tiny")
ASYNC = os.environ.get("BENCH_ASYNC", "0") == "1"


class PredictRequest(BaseModel):
    inputs: list[list[float]]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.model = models.load_state(MODEL)
    yield


app = FastAPI(lifespan=lifespan)


def _forward(req: PredictRequest, request: Request) -> dict[str, list[list[float]]]:
    x = torch.tensor(req.inputs, dtype=torch.float32)
    with torch.inference_mode():
        y = request.app.state.model(x)
    return {"outputs": y.tolist()}


if ASYNC:

    @app.post("/predict")
    async def predict_async(req: PredictRequest, request: Request) -> dict[str, list[list[float]]]:
        return _forward(req, request)

else:

    @app.post("/predict")
    def predict(req: PredictRequest, request: Request) -> dict[str, list[list[float]]]:
        return _forward(req, request)
