"""Handlers for tests, importable as ``tests.handlers:Name`` from a test manifest.

``Picky`` fails one request's decode or encode on a sentinel value, so a test can put a
faulty request in a pass beside good ones. ``Gated`` decodes only once a file exists, so a
real server's test can hold a decode on the inference thread for as long as it wants.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from registry.batching import Tensors
from registry.handler import Handler, HandlerContext, InputError

BAD_INPUT, BAD_OUTPUT, CRASH = 7.0, 8.0, 9.0


class Picky(Handler):
    """Refuses ``BAD_INPUT`` in decode (a 422), breaks on ``CRASH`` in decode and on
    ``BAD_OUTPUT`` in encode (both 500s); counts what each hook saw."""

    def __init__(self, context: HandlerContext, *, scale: float = 1.0) -> None:
        super().__init__(context)
        self.scale = scale
        self.batches: list[int] = []

    def decode(self, inputs: Tensors) -> Tensors:
        (array,) = inputs.values()
        if (array == BAD_INPUT).any():
            raise InputError(f"{BAD_INPUT} is not welcome here")
        if (array == CRASH).any():
            raise RuntimeError("the handler has a bug")
        return {name: value * self.scale for name, value in inputs.items()}

    def batch(self, requests: Any) -> Tensors:
        self.batches.append(len(requests))
        return super().batch(requests)

    def encode(self, outputs: Tensors) -> Tensors:
        (array,) = outputs.values()
        if (array == BAD_OUTPUT * self.scale).any():
            raise RuntimeError("cannot encode that")
        return outputs


class Summer(nn.Module):
    """``(tokens, mask) -> sum(tokens * mask)`` per row: padding with 0 changes nothing."""

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (tokens * mask).sum(dim=1, keepdim=True).to(torch.float32)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1


class Lengths(Handler):
    """Text to its UTF-8 bytes as tokens with a mask (a stand-in tokenizer), and back to a
    sum; its batches are zero-padded by the default ``batch``."""

    def decode(self, inputs: Tensors) -> Tensors:
        (texts,) = inputs.values()
        encoded = [list(str(text).encode()) for text in texts]
        longest = max(len(e) for e in encoded)
        tokens = np.zeros((len(encoded), longest), dtype=np.int64)
        mask = np.zeros((len(encoded), longest), dtype=np.int64)
        for i, e in enumerate(encoded):
            tokens[i, : len(e)], mask[i, : len(e)] = e, 1
        return {"tokens": tokens, "mask": mask}

    def predict(self, module: Callable[..., Any], inputs: Mapping[str, torch.Tensor]) -> Any:
        return {"total": module(inputs["tokens"], inputs["mask"])}


class Gated(Handler):
    """Decodes once ``directory/open`` exists, in 50 ms sleeps; logs each decode's thread."""

    def __init__(self, context: HandlerContext, *, directory: str) -> None:
        super().__init__(context)
        self.directory = Path(directory)

    def decode(self, inputs: Tensors) -> Tensors:
        with (self.directory / "entered").open("a", encoding="utf-8") as log:
            log.write(f"{threading.current_thread().name}\n")
        while not (self.directory / "open").exists():
            time.sleep(0.05)
        return inputs


class SumAndDifference(nn.Module):
    """Two inputs, two outputs, no handler: the defaults name and split them."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a - b


class NoWarmup(Handler):
    """Its ``warmup_inputs`` fails: the version fails to load, with the reason."""

    def warmup_inputs(self, rows: int) -> Tensors | None:
        raise RuntimeError(f"no warm-up inputs today, not even {rows} rows")


class Labeller(Handler):
    """One text per row (a ``string`` output of shape ``[]``): its largest entry's name."""

    def encode(self, outputs: Tensors) -> Tensors:
        (scores,) = outputs.values()
        names = np.empty(len(scores), dtype=object)
        names[:] = [f"class-{int(i)}" for i in scores.reshape(len(scores), -1).argmax(axis=1)]
        return {"label": names}


class FirstColumns(nn.Module):
    """Its answer is a view of its input, which NumPy keeps strided: ``x[:, :2]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2]


class OnWhichThread(nn.Module):
    """Answers 1.0 for every value when its pass ran on an inference thread, 0.0 when it
    ran inline, on the event loop's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on_thread = threading.current_thread().name.startswith("infer-")
        return torch.full_like(x, 1.0 if on_thread else 0.0)
