"""``mlserver-pw0`` / ``mlserver-pw1``: a custom MLModel serving the MLP over the V2 protocol.

``POST /v2/models/{name}/infer``
``{"inputs": [{"name": "x", "shape": [1, N], "datatype": "FP32", "data": [...]}]}``.
With adaptive batching (``max_batch_size`` / ``max_batch_time`` in model-settings.json)
MLServer merges requests along dim 0 before ``predict`` and splits the answer again. The
harness writes settings.json and model-settings.json; the model's name comes from
``parameters.extra.bench_model``.
"""

from __future__ import annotations

import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peers import models


class TorchMLP(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        extra = (parameters.extra or {}) if parameters else {}
        self._torch = models.load_state(str(extra.get("bench_model", self.name)))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        with torch.inference_mode():
            y = self._torch(torch.from_numpy(x).float()).numpy()
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name="y", payload=y)],
        )
