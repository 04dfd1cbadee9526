"""A loaded, warmed-up model version and the one way to run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from registry.batching import Array, Batcher
from registry.dtypes import DType, of_array
from registry.keys import VersionKey
from registry.manifest import ModelSpec, VersionSpec


@dataclass(frozen=True, slots=True)
class OutputInfo:
    """What one instance's output looks like, as seen on a real forward pass."""

    shape: tuple[int, ...]
    dtype: DType


@dataclass(eq=False)
class LoadedModel:
    """One version in memory, on its device, in eval mode, with its own batcher.

    ``leases`` counts requests that hold this version, so a retired version is only
    released once its last request has finished.
    """

    spec: ModelSpec
    version_spec: VersionSpec
    module: Callable[[torch.Tensor], object]
    device: torch.device
    memory_bytes: int
    load_ms: float
    warmup_ms: float = 0.0
    weights_sha256: str = ""
    """sha256 of the very bytes this version was deserialised from."""
    output: OutputInfo | None = None
    """Learned at warm-up, or on the first forward pass when warm-up is off."""
    leases: int = 0
    retired: bool = False
    _batcher: Batcher | None = field(default=None, repr=False)
    # NOTE: plain attributes, not properties: every request reads them, some more than once.
    name: str = field(init=False)
    version: str = field(init=False)
    key: VersionKey = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.spec.name
        self.version = self.version_spec.version
        self.key = VersionKey(self.name, self.version)

    @property
    def queue_depth(self) -> int:
        return self._batcher.queue_depth if self._batcher else 0

    def forward_blocking(self, inputs: Array) -> Array:
        """One forward pass on a batch, on the calling thread.

        NOTE: it blocks for as long as the model computes: a route awaits ``infer``, which
        queues behind other requests and runs this on the version's inference thread.
        """
        tensor = torch.from_numpy(np.ascontiguousarray(inputs))
        if self.device.type != "cpu":
            tensor = tensor.to(self.device, non_blocking=True)
        with torch.inference_mode():
            output = self.module(tensor)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"{self.key} returned {type(output).__name__}, expected a Tensor")
        answer = output.detach().to("cpu").numpy()
        dtype = of_array(answer.dtype)  # NOTE: an answer no protocol can carry fails here
        if self.output is None and answer.ndim:
            self.output = OutputInfo(tuple(answer.shape[1:]), dtype)
        return answer

    def start(self) -> None:
        """Attach a batcher; call on the event loop that will serve this version."""
        self._batcher = Batcher(self.forward_blocking, self.spec.batching, key=self.key)
        self._batcher.start()

    async def infer(self, inputs: Array, timeout_s: float | None = None) -> Array:
        """Queue a batch of instances behind other requests and await its outputs; 504
        (``InferenceTimeout``) past ``timeout_s``."""
        if self._batcher is None:
            raise RuntimeError(f"{self.key} is not started")
        return await self._batcher.submit(inputs, timeout_s)

    def release(self) -> None:
        """Give the weights' memory back now, whatever still refers to the module.

        NOTE: a garbage collection cannot be relied on: exported graphs hold reference
        cycles, and versions loaded before the heap was frozen (``registry.heap``) are never
        collected. Emptying each tensor in place frees its storage at once and leaves only
        small Python objects behind, without a full collection stalling the event loop.
        """
        module = self.module
        self.module = _released
        if not isinstance(module, torch.nn.Module):
            return
        held = [*module.parameters(), *module.buffers()]
        held += [
            v for m in module.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)
        ]
        for tensor in held:
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)

    async def stop(self) -> None:
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            await batcher.stop()


def _released(_: torch.Tensor) -> object:
    raise RuntimeError("this version was released")
