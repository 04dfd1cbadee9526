"""``torchserve``: a minimal custom handler for the TorchScript MLP.

``BaseHandler.initialize`` loads the archive's serialized TorchScript file. Each request
body is ``{"inputs": [[...]]}``; TorchServe hands over up to ``batchSize`` requests, which
are concatenated, run once and split back into ``[{"outputs": [[...]]}, ...]``.
The harness archives this file with ``torch-model-archiver``; it runs in TorchServe's
Python backend worker, so it imports nothing of this repository.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

log = logging.getLogger(__name__)


class MLPHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self._rows: list[int] = []
        log.info(
            "bench handler: torch threads=%d interop=%d",
            torch.get_num_threads(),
            torch.get_num_interop_threads(),
        )

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = []
        for request in data:
            body: Any = request.get("body")
            if body is None:
                body = request.get("data")
            if isinstance(body, bytes | bytearray):
                body = json.loads(body)
            rows.append(torch.tensor(body["inputs"], dtype=torch.float32))
        self._rows = [t.shape[0] for t in rows]
        return torch.cat(rows, 0)

    def inference(self, data: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = self.model(data)
        return out

    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        return [{"outputs": part.tolist()} for part in data.split(self._rows)]
