"""``python -m bench.handoff``: what running the forward on a worker thread costs one request.

At concurrency 1 on a small model the HTTP round trip is a few hundred microseconds, so
the two thread hand-offs of the serving path (event loop → inference thread → event
loop, ``registry.batching``) are a large share of it. This measures them in-process,
with the real ``Batcher`` on uvloop and the ``tiny`` MLP: the same lone requests, one after
another, through ``Batcher.submit`` kept on its thread (``inline_max_s=0``), through
``Batcher.submit`` as served (inline once the forward has proven fast, see
``registry.inline``) and by calling the forward directly. Every thread runs torch on one
thread, as a server runs a small model's passes (its lifespan sets the loop's, and each
inference thread its own): on torch's default each thread's first forward forms an
OpenMP team whose worker spins between requests, and slows every measurement after it.
``--same-core`` pins the process to one CPU first, which shows how much of the cost is
waking an idle CPU rather than the Python around the hand-off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import numpy as np
import torch
import uvloop

from bench import MAX_BATCH, MODELS
from registry.batching import Array, Batcher, concatenated
from registry.examples.mlp import MLP
from registry.inline import INLINE_EVIDENCE, INLINE_MAX_S
from registry.keys import VersionKey
from registry.manifest import BatchingSpec
from registry.threads import use_threads

WIDTHS = MODELS["tiny"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.handoff", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--same-core", action="store_true", help="pin to one CPU first")
    args = parser.parse_args()
    if args.same_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    uvloop.run(compare(args.requests, args.repeats))


async def compare(requests: int, repeats: int) -> None:
    use_threads(1)
    torch.manual_seed(0)
    model = MLP(WIDTHS).eval()

    def forward(inputs: Array) -> Array:
        with torch.inference_mode():
            output: Array = model(torch.from_numpy(inputs)).numpy()
        return output

    sample = np.random.default_rng(0).standard_normal((1, WIDTHS[0]), dtype=np.float32)
    config, key = BatchingSpec(max_batch_size=MAX_BATCH), VersionKey("tiny", "1")

    def one_thread(_: int, __: bool) -> None:
        use_threads(1)

    threaded = Batcher(
        concatenated(forward), config, key=key, inline_max_s=0.0, share=one_thread
    )  # NOTE: never inline
    served = Batcher(concatenated(forward), config, key=key, share=one_thread)
    threaded.start()
    served.start()

    async def direct(inputs: Array) -> Array:
        return forward(inputs)

    try:
        on_thread = await per_request_us(threaded.submit, sample, requests, repeats)
        as_served = await per_request_us(served.submit, sample, requests, repeats)
        inline = await per_request_us(direct, sample, requests, repeats)
    finally:
        await threaded.stop()
        await served.stop()
    print(f"forward on the inference thread: {on_thread:7.1f} µs per request (median)")
    print(f"Batcher.submit as served:        {as_served:7.1f} µs per request (median)")
    print(
        f"  (inline once {INLINE_EVIDENCE} passes in a row took less than the measured "
        f"hand-off, at most {INLINE_MAX_S * 1e6:.0f} µs)"
    )
    print(f"forward called directly:         {inline:7.1f} µs per request (median)")
    print(f"the two hand-offs:               {on_thread - inline:7.1f} µs")


async def per_request_us(
    call: Callable[[Array], Awaitable[Array]], sample: Array, requests: int, repeats: int
) -> float:
    for _ in range(1_000):  # NOTE: warm the thread, the allocator and torch's dispatch
        await call(sample)
        await asyncio.sleep(0)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(requests):
            await call(sample)
            # NOTE: the next request in a later turn of the loop, as a client's arrives; the
            # batcher sends a second request of the same turn to its thread.
            await asyncio.sleep(0)
        timings.append((time.perf_counter() - started) / requests * 1e6)
    return statistics.median(timings)


if __name__ == "__main__":
    main()
