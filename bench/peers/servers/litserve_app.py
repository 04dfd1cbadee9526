"""``litserve`` / ``litserve-nobatch``.

    python -m bench.peers.servers.litserve_app MODEL PORT MAX_BATCH BATCH_TIMEOUT_S

One ``LitServer(accelerator="cpu", workers_per_device=1)``: LitServe's default of one
uvicorn API-server process and one inference worker process. With MAX_BATCH > 1 LitServe
collects up to MAX_BATCH requests or waits BATCH_TIMEOUT_S, then calls batch, predict,
unbatch (``torch.cat`` and ``split``). ``POST /predict {"inputs": [[...]]}`` ->
``{"outputs": [[...]]}``.
"""

from __future__ import annotations

import sys
from typing import Any

import litserve as ls
import torch

from bench.peers import models


class MLPAPI(ls.LitAPI):
    def __init__(self, model_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self._rows: list[int] = []

    def setup(self, device: str) -> None:  # noqa: ARG002 -- LitAPI's signature; CPU only
        self.model = models.load_state(self.model_name)

    # NOTE: LitServe builds the route from these two signatures: an annotated request
    # becomes a FastAPI parameter (a query parameter for a dict) and an annotated return
    # a response model. Unannotated, it parses the JSON body and returns it as is, which
    # is how the published table was measured.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return torch.tensor(request["inputs"], dtype=torch.float32)  # [rows, in]

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        self._rows = [t.shape[0] for t in inputs]
        return torch.cat(inputs, 0)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = self.model(x)
        return out

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output.split(self._rows))

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return {"outputs": output.tolist()}


def main(argv: list[str]) -> None:
    name, port = argv[0], int(argv[1])
    max_batch = int(argv[2]) if len(argv) > 2 else 1
    timeout = float(argv[3]) if len(argv) > 3 else 0.0
    api = MLPAPI(name, max_batch_size=max_batch, batch_timeout=timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main(sys.argv[1:])
