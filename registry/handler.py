"""The code around a model's forward pass: one small class whose every hook is optional.

A manifest entry names a handler (``handler: package.module:Name``, with ``handler_args``)
when its model needs work on either side of the forward pass: tokenize text, decode an
image, pool and normalise, pick the top classes. The server has already read the request,
whatever its protocol (native JSON, raw bytes, V2 JSON or binary), into the *declared*
inputs: named NumPy arrays, checked against the manifest's ``inputs`` (names, dtypes,
shapes, at most ``max_batch_size`` rows), each with the request's rows on its first axis.
Text is an object array of ``str``, binary values (images) one of ``bytes``. A forward
pass then goes, for every request that met in the queue::

    decode_batch ─► batch ─► predict ─► unbatch ─► encode      (each a hook below)

and each request gets back its *declared* outputs, which the server writes in the
protocol the client spoke. So a handler never sees HTTP, and the same handler serves the
native routes and the Open Inference Protocol alike.

Every hook runs on the version's inference thread, never on the event loop: a slow decode
delays that model's passes, not other requests. A version with ``instances: N`` runs N
passes at once through one handler object, so a handler keeps no state between calls
(or guards it). ``decode`` and ``encode`` work on one
request, so one request's bad input fails that request alone: a ``ValueError`` (such as
``InputError``) from ``decode`` is a 422 with its message, anything else a 500
``model_failed``, logged with its traceback. A failure in ``batch``, ``predict`` or
``unbatch`` fails the pass, as a model's own failure always has.

The defaults reproduce a model without a handler: inputs go to the module positionally in
the declared order, requests are concatenated (variable axes zero-padded), a tensor (or a
tuple, or a dict) that comes back is named by the declared outputs, and split by rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from registry.batching import Array, Tensors
from registry.dtypes import DTYPES
from registry.manifest import OutputSpec, TensorSpec
from registry.weightfiles import confined_file


class InputError(ValueError):
    """What ``decode`` raises about a request's payload: a 422 for it alone, this message."""


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler may know of the version it serves, given to its constructor."""

    model: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[OutputSpec, ...]
    device: torch.device
    files: Path
    """The version's directory under the weights root (where its weight file lies)."""
    weights_root: Path

    def file(self, relative: str) -> Path:
        """A file named in ``handler_args``, relative to the version's folder (a tokenizer
        lies beside the weights).

        NOTE: confined to the weights root like weight paths, symlinks included, so a
        manifest can name a tokenizer but never a file elsewhere on the machine.
        """
        inside = self.files.relative_to(self.weights_root)
        return confined_file(self.weights_root, PurePosixPath(inside.as_posix()) / relative)


class Handler:
    """The defaults: what a model without a handler does. Subclass and override any hook.

    A subclass takes the context first and its ``handler_args`` as keyword arguments::

        class Embedder(Handler):
            def __init__(self, context: HandlerContext, *, max_tokens: int = 256) -> None:
                super().__init__(context)
                ...
    """

    pad_value: float = 0
    """What ``batch`` pads a variable axis with: 0 is also a mask's "no token"."""

    def __init__(self, context: HandlerContext) -> None:
        self.context = context

    def decode(self, inputs: Tensors) -> Tensors:
        """One request's declared inputs as the model's inputs, the same rows."""
        return inputs

    def decode_batch(self, requests: Sequence[Tensors]) -> list[Tensors]:
        """Every request of a pass at once: override when a library works faster on many
        (a tokenizer's ``encode_batch``). If it raises, each request is decoded alone, so
        only the one at fault fails."""
        return [self.decode(inputs) for inputs in requests]

    def batch(self, requests: Sequence[Tensors]) -> Tensors:
        """The requests' model inputs as one batch: concatenated on the first axis, each
        other axis zero-padded (``pad_value``) to the longest."""
        first = requests[0]
        if len(requests) == 1:
            return first
        return {name: concatenate([r[name] for r in requests], self.pad_value) for name in first}

    def predict(self, module: Callable[..., Any], inputs: Mapping[str, torch.Tensor]) -> Any:
        """The forward pass, under ``torch.inference_mode``: a tensor, a tuple of them (in
        the order of the declared outputs), or a dict by name."""
        return module(*inputs.values())

    def unbatch(self, outputs: Tensors, rows: Sequence[int]) -> list[Tensors]:
        """The batch's outputs, split into each request's rows (views, not copies).

        NOTE: slices rather than ``np.split``: 8 µs for 16 rows against 30, on the inference
        thread, which holds the GIL the event loop wants meanwhile.
        """
        if len(rows) == 1:
            return [outputs]
        parts = []
        start = 0
        for count in rows:
            end = start + count
            parts.append({name: array[start:end] for name, array in outputs.items()})
            start = end
        return parts

    def encode(self, outputs: Tensors) -> Tensors:
        """One request's model outputs as its declared outputs, the same rows."""
        return outputs

    def warmup_inputs(self, rows: int) -> Tensors | None:
        """Declared inputs for a warm-up pass of ``rows`` rows, or None to skip warm-up.

        The default makes zeros (a variable axis one long) and short texts; it cannot make
        a valid image, so a model with a ``bytes`` input skips warm-up unless its handler
        says how (``placeholders`` makes the rest).
        """
        if any(spec.dtype == "bytes" for spec in self.context.inputs):
            return None
        return placeholders(self.context.inputs, rows)


def placeholders(specs: Sequence[TensorSpec], rows: int) -> Tensors:
    """Zeros and short texts of the declared shapes (a variable axis one long), ``rows``
    of each; ``bytes`` inputs are left out: no placeholder is a valid image."""
    made: Tensors = {}
    for spec in specs:
        shape = (rows, *(max(n, 1) for n in spec.shape))
        if spec.dtype == "string":
            made[spec.name] = np.full(shape, "warm-up", dtype=object)
        elif spec.dtype != "bytes":
            made[spec.name] = np.zeros(shape, dtype=DTYPES[spec.dtype].numpy)
    return made


def concatenate(arrays: Sequence[Array], pad_value: float = 0) -> Array:
    """Arrays on their first axis, each other axis padded at its end to the longest."""
    shape = arrays[0].shape[1:]
    if all(a.shape[1:] == shape for a in arrays):  # NOTE: the common case, in half the time
        return np.concatenate(arrays)
    longest = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays), strict=True))
    padded = [
        a
        if a.shape[1:] == longest
        else np.pad(
            a,
            [(0, 0), *((0, n - m) for n, m in zip(longest, a.shape[1:], strict=True))],
            constant_values=pad_value,
        )
        for a in arrays
    ]
    return np.concatenate(padded)
