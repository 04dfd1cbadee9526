"""A loaded, warmed-up model version and the one way to run it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from registry.batching import Array, Batcher, Tensors
from registry.buckets import Buckets
from registry.dtypes import DTYPES, DType, of_array
from registry.errors import InvalidInput, ModelFailed, RegistryError
from registry.handler import Handler
from registry.keys import VersionKey
from registry.manifest import ModelSpec, OutputSpec, VersionSpec, fits_shape
from registry.threads import NARROW, WideThreads, use_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutputInfo:
    """What one instance's output looks like, as seen on a real forward pass."""

    shape: tuple[int, ...]
    dtype: DType


BATCH_BUCKETS = tuple(2**i for i in range(13))
"""Upper bounds of the pass-size histogram, in rows: 1, 2, 4 ... 4096 (the batch cap)."""
TIME_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds, in seconds, of the queue-wait and pass-time histograms: from an inline
pass of a tiny model (zero wait, ~0.1 ms) to a queue behind a transformer's batches."""


@dataclass(eq=False)
class LoadedModel:
    """One version in memory, on its device, in eval mode, with its handler and batcher.

    ``leases`` counts requests that hold this version, so a retired version is only
    released once its last request has finished.
    """

    spec: ModelSpec
    version_spec: VersionSpec
    module: Callable[..., object]
    device: torch.device
    memory_bytes: int
    load_ms: float
    handler: Handler
    warmup_ms: float = 0.0
    weights_sha256: str = ""
    """sha256 of the very bytes this version was deserialised from."""
    outputs_seen: dict[str, OutputInfo] = field(default_factory=dict)
    """Each output as a forward pass showed it: at warm-up, or the first pass without."""
    leases: int = 0
    last_used: float = 0.0
    """``time.monotonic()`` of the last lease (or the load): eviction picks the oldest."""
    retired: bool = False
    evicted: str | None = None
    """Why it was taken out of the table while the manifest still names it (an
    ``EvictionReason``); ``None`` when a reload retired it."""
    charge: tuple[str, int] | None = None
    """(device, bytes) the memory budget holds for it until its memory is given back."""
    passes: Buckets = field(default_factory=lambda: Buckets(BATCH_BUCKETS))
    """The rows of every forward pass served through the batcher (not warm-up)."""
    pass_seconds: Buckets = field(default_factory=lambda: Buckets(TIME_BUCKETS))
    """How long each of those passes took, handler hooks included: the model's cost."""
    queue_seconds: Buckets = field(default_factory=lambda: Buckets(TIME_BUCKETS))
    """How long each request waited before its pass began: how busy the version is."""
    _batcher: Batcher[Tensors, Tensors] | None = field(default=None, repr=False)
    _stopping: asyncio.Future[None] | None = field(default=None, repr=False)
    _counting: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Held while a pass is counted: several instances may finish passes at once."""
    # NOTE: plain attributes, not properties: every request reads them, some more than once.
    name: str = field(init=False)
    version: str = field(init=False)
    key: VersionKey = field(init=False)
    _output_names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.spec.name
        self.version = self.version_spec.version
        self.key = VersionKey(self.name, self.version)
        self._output_names = tuple(o.name for o in self.spec.outputs)
        # NOTE: hooks left at their defaults are identities: skipping them keeps a model
        # without a handler as cheap per request as before handlers existed.
        self._decodes = overrides(self.handler, "decode", "decode_batch")
        self._decodes_batches = overrides(self.handler, "decode_batch")
        self._encodes = overrides(self.handler, "encode")
        self._plain_outputs = not overrides(self.handler, "unbatch", "encode")

    @property
    def queue_depth(self) -> int:
        return self._batcher.queue_depth if self._batcher else 0

    def run_blocking(self, requests: list[Tensors]) -> list[Tensors | Exception]:
        """One forward pass for several requests' declared inputs, through the handler's
        hooks (``registry.handler``), on the calling thread: each request's declared
        outputs, or the error that fails it alone.

        NOTE: it blocks for as long as the model computes: a route awaits ``infer``, which
        queues behind other requests and runs this on the version's inference thread.
        """
        handler = self.handler
        answers: list[Tensors | Exception]
        if self._decodes:
            answers = self._decoded(requests)
            live = [i for i, decoded in enumerate(answers) if not isinstance(decoded, Exception)]
            if not live:
                return answers
        else:
            answers, live = list(requests), list(range(len(requests)))
        inputs = handler.batch([cast(Tensors, answers[i]) for i in live])
        tensors = {name: self._to_torch(name, array) for name, array in inputs.items()}
        with torch.inference_mode():
            raw = handler.predict(self.module, tensors)
        outputs = named_outputs(raw, self._output_names)
        rows = [rows_of(requests[i]) for i in live]
        total = sum(rows)
        for name, array in outputs.items():
            if not array.ndim or len(array) != total:
                raise ValueError(
                    f"output {name!r} of shape {list(array.shape)} lacks the batch axis "
                    f"(expected {total} rows)"
                )
        parts = handler.unbatch(outputs, rows)
        encoded: Sequence[Tensors | Exception]
        if self._plain_outputs:
            # NOTE: each request's outputs are rows of the batch's: checked once for all
            checked = self._encoded(outputs, total)
            encoded = [checked] * len(live) if isinstance(checked, Exception) else parts
        else:
            encoded = [self._encoded(part, count) for part, count in zip(parts, rows, strict=True)]
        for i, answer in zip(live, encoded, strict=True):
            answers[i] = answer
        return answers

    def _decoded(self, requests: list[Tensors]) -> list[Tensors | Exception]:
        """Each request's model inputs, or why that request fails; all at once if the
        handler can, else one by one so that only the faulty one fails."""
        handler = self.handler
        if len(requests) > 1 and self._decodes_batches:
            try:
                decoded: list[Tensors | Exception] = list(handler.decode_batch(requests))
            except Exception:  # noqa: S110 (each is decoded alone below, and its error kept)
                pass
            else:
                if len(decoded) == len(requests):
                    return decoded
        answers: list[Tensors | Exception] = []
        for inputs in requests:
            try:
                answers.append(handler.decode_batch([inputs])[0])
            except Exception as exc:
                answers.append(self._failure(exc, "decode", client_error=True))
        return answers

    def _encoded(self, outputs: Tensors, rows: int) -> Tensors | Exception:
        try:
            return self._checked(self.handler.encode(outputs) if self._encodes else outputs, rows)
        except Exception as exc:
            return self._failure(exc, "encode", client_error=False)

    def _failure(self, exc: Exception, hook: str, *, client_error: bool) -> Exception:
        """What one request gets for a hook's error: the error itself if it is one a client
        may see, a 422 for a ``ValueError`` in ``decode``, else a logged 500."""
        if isinstance(exc, RegistryError):
            return exc
        if client_error and isinstance(exc, ValueError):
            return InvalidInput(str(exc) or f"{type(exc).__name__} in the handler's {hook}")
        log.error("handler %s failed", hook, exc_info=exc, extra={"model": str(self.key)})
        failed = ModelFailed(self.key)
        failed.__cause__ = exc  # NOTE: what a warm-up reports, for the operator
        return failed

    def _to_torch(self, name: str, array: Array) -> torch.Tensor:
        if array.dtype.kind == "O":
            raise TypeError(
                f"input {name!r} holds Python objects; a handler's decode must "
                "turn text and bytes into numbers"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cpu":
            tensor = tensor.to(self.device, non_blocking=True)
        return tensor

    def _checked(self, answer: Tensors, rows: int) -> Tensors:
        """``answer`` if it is the declared outputs, ``rows`` of each; learns what each
        looks like on the first pass. A ``ValueError`` otherwise (a 500: the model's fault).
        """
        if len(answer) != len(self._output_names):
            raise ValueError(
                f"outputs {sorted(answer)} are not the declared {list(self._output_names)}"
            )
        for spec in self.spec.outputs:
            array = answer.get(spec.name)
            if not isinstance(array, np.ndarray) or not array.ndim or len(array) != rows:
                raise ValueError(
                    f"outputs {sorted(answer)} are not the declared {list(self._output_names)}, "
                    f"each an array of {rows} rows"
                )
            seen = self.outputs_seen.get(spec.name)
            if seen is None or seen.shape != array.shape[1:] or seen.dtype.numpy != array.dtype:
                self._learn(spec, array)
        return answer

    def _learn(self, spec: OutputSpec, array: Array) -> None:
        """Check an output against its declaration (the first time, and whenever its shape
        changes) and remember what it looks like, for the V2 metadata."""
        if array.dtype.kind == "O":
            dtype = DTYPES[spec.dtype or "string"]
            if spec.dtype is not None and dtype.numpy.kind != "O":
                raise ValueError(f"output {spec.name!r} holds objects, not {spec.dtype}")
        else:
            dtype = of_array(array.dtype)  # NOTE: an answer no protocol can carry fails here
            if spec.dtype is not None and dtype.name != spec.dtype:
                raise ValueError(f"output {spec.name!r} is {dtype.name}, not {spec.dtype}")
        shape = tuple(array.shape[1:])
        if spec.shape is not None and not fits_shape(shape, spec.shape):
            raise ValueError(
                f"output {spec.name!r} has instance shape {list(shape)}, not {list(spec.shape)}"
            )
        if spec.name not in self.outputs_seen:
            self.outputs_seen[spec.name] = OutputInfo(shape, dtype)

    def forward_blocking(self, inputs: Array) -> Array:
        """A one-input, one-output model's pass on a batch, on the calling thread (tests,
        benchmarks and warm-up checks; routes go through ``infer``)."""
        (answer,) = self.run_blocking([{self.spec.inputs[0].name: inputs}])
        if isinstance(answer, Exception):
            raise answer
        return answer[self._output_names[0]]

    def start(self, wide: WideThreads) -> None:
        """Attach a batcher; call on the event loop that will serve this version.

        Each inference thread sets its own torch thread count. A pass that may run on
        several threads (the first instance's, while it holds one of the process's
        ``wide`` permits, ``registry.threads``) gets ``wide.threads`` less one for each
        other pass running; every other pass runs on one thread. On a device other than
        the CPU, which then only launches the passes, none needs a permit.
        """
        threads = wide.threads
        if self.device.type != "cpu":
            wide = NARROW
        self._batcher = Batcher(
            self.run_blocking,
            self.spec.batching,
            key=self.key,
            rows_of=rows_of,
            # NOTE: a handler's code never runs on the event loop, however fast; nor does
            # a pass of an input with a variable axis, where one row may be as long as the
            # body limit allows, so that short rows' passes prove nothing of the next
            inline_max_s=None if type(self.handler) is Handler and self._fixed_inputs() else 0.0,
            on_pass=self._passed,
            instances=self.spec.instances,
            share=lambda passes, many: use_threads(max(1, threads - passes + 1) if many else 1),
            wide=wide,
        )
        self._batcher.start()

    def _fixed_inputs(self) -> bool:
        return all(-1 not in spec.shape for spec in self.spec.inputs)

    def _passed(self, rows: int, seconds: float, waits: Sequence[float]) -> None:
        """On whichever thread ran the pass: count it."""
        with self._counting:
            self.passes.add(rows)
            self.pass_seconds.add(seconds)
            for wait in waits:
                self.queue_seconds.add(wait)

    async def infer_tensors(self, inputs: Tensors, timeout_s: float | None = None) -> Tensors:
        """Queue a request's declared inputs behind other requests and await its declared
        outputs; 504 (``InferenceTimeout``) past ``timeout_s``."""
        if self._batcher is None:
            raise RuntimeError(f"{self.key} is not started")
        return await self._batcher.submit(inputs, timeout_s)

    async def infer(self, inputs: Array, timeout_s: float | None = None) -> Array:
        """``infer_tensors`` for a one-input, one-output model."""
        answer = await self.infer_tensors({self.spec.inputs[0].name: inputs}, timeout_s)
        return answer[self._output_names[0]]

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
        """End the version's inference threads. A second caller (shutdown while an eviction
        stops it) waits for the same stop to end, so that neither releases the weights
        while a pass may still run on them."""
        if self._stopping is None:
            if self._batcher is None:
                return
            batcher, self._batcher = self._batcher, None
            self._stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.shield(self._stopping)


def _released(*_: torch.Tensor) -> object:
    raise RuntimeError("this version was released")


def rows_of(inputs: Tensors) -> int:
    """A request's row count: every input has it (the codecs check)."""
    return len(next(iter(inputs.values())))


def overrides(handler: Handler, *hooks: str) -> bool:
    """Whether ``handler``'s class replaces any of these hooks of ``Handler``'s."""
    return any(getattr(type(handler), hook) is not getattr(Handler, hook) for hook in hooks)


def named_outputs(raw: object, names: tuple[str, ...]) -> Tensors:
    """What ``predict`` returned, as named NumPy arrays on the CPU: a dict keeps its names,
    a tensor or a tuple takes the declared outputs' names in order."""
    if type(raw) is torch.Tensor and len(names) == 1:  # NOTE: the common case, first
        return {names[0]: raw.detach().to("cpu").numpy()}
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, tuple | list):
        if len(raw) != len(names):
            raise ValueError(f"{len(raw)} outputs came back; the manifest declares {len(names)}")
        items = list(zip(names, raw, strict=True))
    else:
        if len(names) != 1:
            raise ValueError(f"one output came back; the manifest declares {list(names)}")
        items = [(names[0], raw)]
    return {str(name): _to_numpy(name, value) for name, value in items}


def _to_numpy(name: object, value: object) -> Array:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"output {name!r} is {type(value).__name__}, not a tensor or an array")
