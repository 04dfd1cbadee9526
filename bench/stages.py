"""Where a ``minilm`` request's time goes: each stage timed in process, no server.

    python -m bench.stages [--rows 1,8,64] [--repeats 50]

For passes of 1, 8 and 64 requests (one sentence each), the median time of every stage a
request goes through, per request: reading the JSON body into declared inputs (on the
event loop), the handler's tokenizing (``decode_batch``), padding into one batch, the
forward pass with pooling (``predict``), splitting and checking the outputs, and writing
the JSON answer (on the event loop). Queueing is what a served request spends beyond
these, so the load benchmark's latency less their sum shows it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import torch

from registry.codec import encode_prediction
from registry.loaders import load_version
from registry.manifest import load_manifest
from registry.model import LoadedModel
from registry.named import decode_inputs

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--rows", default="1,8,64")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model = minilm()
    print("| requests per pass | " + " | ".join(STAGES) + " | total µs/request |")
    print("|---|" + "---|" * (len(STAGES) + 1))
    for rows in (int(r) for r in args.rows.split(",")):
        costs = stage_costs(model, rows, args.repeats)
        cells = " | ".join(f"{costs[stage]:.0f}" for stage in STAGES)
        print(f"| {rows} | {cells} | {sum(costs.values()):.0f} |", flush=True)


STAGES = ("read JSON", "tokenize", "pad", "forward + pool", "split + check", "write JSON")


def minilm() -> LoadedModel:
    manifest = load_manifest(ROOT / "models.yaml")
    (spec,) = [m for m in manifest.models if m.name == "minilm"]
    return load_version(spec, spec.versions[0], ROOT / "weights")


def stage_costs(model: LoadedModel, rows: int, repeats: int) -> dict[str, float]:
    """Median µs per request of each stage, for a pass of ``rows`` one-sentence requests."""
    spec, handler = model.spec, model.handler
    body = orjson.dumps({"inputs": SENTENCE})
    requests = [decode_inputs(body, spec.inputs, max_rows=64).tensors for _ in range(rows)]
    decoded = handler.decode_batch(requests)
    batch = handler.batch(decoded)
    tensors = {name: torch.from_numpy(array) for name, array in batch.items()}

    def forward() -> Any:
        with torch.inference_mode():
            return handler.predict(model.module, tensors)

    outputs = {"embedding": forward().numpy()}
    answers = model.run_blocking(requests)
    answer = answers[0]
    assert isinstance(answer, dict)  # noqa: S101 (the pass must have worked)
    per_pass = {
        "read JSON": lambda: [decode_inputs(body, spec.inputs, max_rows=64) for _ in range(rows)],
        "tokenize": lambda: handler.decode_batch(requests),
        "pad": lambda: handler.batch(decoded),
        "forward + pool": forward,
        "split + check": lambda: [
            model._checked(part, 1) for part in handler.unbatch(outputs, [1] * rows)
        ],
        "write JSON": lambda: [
            encode_prediction("minilm", "1", answer, False, spec.outputs) for _ in range(rows)
        ],
    }
    return {stage: median_us(run, repeats) / rows for stage, run in per_pass.items()}


def median_us(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


if __name__ == "__main__":
    main()
