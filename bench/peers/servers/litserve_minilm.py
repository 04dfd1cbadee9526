"""``make bench``'s LitServe peer for ``minilm``: the same tokenizer, encoder and pooling.

    python -m bench.peers.servers.litserve_minilm DIR PORT BATCH TIMEOUT [ROWS [THREADS [WORKERS]]]

``DIR`` holds ``model.safetensors`` and ``tokenizer.json`` (the repository's
``weights/minilm/1``). It runs in the ``litserve`` venv with the repository on
``PYTHONPATH`` so it can import ``registry.examples.minilm`` (torch only): the very module
this project serves, so both sides run the same encoder and only the serving differs.

One ``LitServer(accelerator="cpu", workers_per_device=1)``: LitServe's default of one
uvicorn API-server process and one inference worker process. LitServe collects up to
BATCH requests or waits TIMEOUT seconds, then calls ``batch`` (every text of the batch
in one ``encode_batch`` call, padded to the longest, as this project's handler does),
``predict`` (forward, masked mean pooling, L2 normalisation), ``unbatch`` (one row each).
``POST /predict {"inputs": "text"}`` -> ``{"outputs": [384 floats]}``.

Given a ROWS file, every ``batch`` call appends its size to it (one line each) so the
benchmark can report LitServe's rows per forward pass beside this project's
``registry_batch_rows`` histogram; one small ``write`` per pass, against a forward pass
of milliseconds. THREADS > 0 sets the worker's torch intra-op threads; 0 (the default)
leaves torch's own choice, one per core, which is what a LitServe user gets. WORKERS is
``workers_per_device`` (1, LitServe's default, unless given).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from registry.examples.minilm import MiniLMEncoder, token_batch


class MiniLMAPI(ls.LitAPI):
    def __init__(
        self,
        folder: Path,
        rows: Path | None = None,
        threads: int = 0,
        max_tokens: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.folder = folder
        self.rows = rows
        self.threads = threads
        self.max_tokens = max_tokens
        self._rows: int | None = None

    def setup(self, device: str) -> None:  # noqa: ARG002 -- LitAPI's signature; CPU only
        # NOTE: in the inference worker process, so the tokenizer's Rust thread pool is
        # created there, never inherited through a fork.
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        # The file pads everything to 128 of its own; pad per batch instead, as the
        # project's handler does, and cut at the manifest's max_tokens.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)
        self.model = MiniLMEncoder().eval()
        self.model.load_state_dict(load_file(str(self.folder / "model.safetensors")))
        if self.rows is not None:
            self._rows = os.open(self.rows, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        # NOTE: unannotated, like litserve_app.py: LitServe then parses the JSON body and
        # passes the dict, without a pydantic model of its own in the way.
        return str(request["inputs"])

    def batch(self, inputs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """All texts in one ``encode_batch`` (parallel, in Rust), right-padded with 0."""
        if self._rows is not None:
            os.write(self._rows, f"{len(inputs)}\n".encode())
        return token_batch(self.tokenizer, inputs)

    def predict(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, attention = x
        with torch.inference_mode():
            states = self.model(ids, attention)
            mask = attention.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return {"outputs": output.tolist()}


def main(argv: list[str]) -> None:
    folder, port = Path(argv[0]), int(argv[1])
    max_batch = int(argv[2]) if len(argv) > 2 else 64
    timeout = float(argv[3]) if len(argv) > 3 else 0.002
    rows = Path(argv[4]) if len(argv) > 4 and argv[4] else None
    threads = int(argv[5]) if len(argv) > 5 else 0
    workers = int(argv[6]) if len(argv) > 6 else 1
    api = MiniLMAPI(folder, rows, threads, max_batch_size=max_batch, batch_timeout=timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers, timeout=30)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main(sys.argv[1:])
