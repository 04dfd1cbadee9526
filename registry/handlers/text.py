"""Sentence embeddings and sentence similarity from a BERT-style encoder.

The model is an encoder that takes ``(input_ids, attention_mask)`` and gives token states
``[rows, tokens, hidden]`` (``registry.examples.minilm``, or any module exported so). The
handler tokenizes with the `tokenizers` library (its Rust code, not ``transformers``),
mean-pools the states over the real tokens and L2-normalises them: what
sentence-transformers does for all-MiniLM-L6-v2 and its kin.

Every text of every request that meets in one pass is tokenized in one ``encode_batch``
call, and all of them go through the encoder in one forward pass, padded to the longest.
Text longer than ``max_tokens`` (special tokens included) is cut there
(``overflow: truncate``, as sentence-transformers does) or refused with a 422 naming the
limit (``overflow: refuse``), as the manifest's ``handler_args`` say.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer

from registry.batching import Tensors
from registry.handler import Handler, HandlerContext, InputError, placeholders

IDS, MASK = "input_ids", "attention_mask"
_WORD = re.compile(r"\S+")


class SentenceEncoder(Handler):
    """Tokenizes every ``string`` input; ``embed`` turns them into unit vectors."""

    def __init__(
        self,
        context: HandlerContext,
        *,
        tokenizer: str = "tokenizer.json",
        max_tokens: int = 256,
        overflow: Literal["truncate", "refuse"] = "truncate",
    ) -> None:
        super().__init__(context)
        if overflow not in ("truncate", "refuse"):
            raise ValueError(f"overflow must be 'truncate' or 'refuse', not {overflow!r}")
        texts = [spec for spec in context.inputs if spec.dtype == "string"]
        if not texts or any(spec.shape for spec in texts):
            raise ValueError(
                "a sentence encoder needs 'string' inputs of shape [] (one text per instance)"
            )
        self.texts = [spec.name for spec in texts]
        self.max_tokens = max_tokens
        self.refuse = overflow == "refuse"
        self.tokenizer = Tokenizer.from_file(str(context.file(tokenizer)))
        # NOTE: the file may carry padding and truncation settings of its own (the
        # package's pads everything to 128); batches are padded by ``batch`` instead.
        self.tokenizer.no_padding()
        if self.refuse:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(max_tokens)

    def warmup_inputs(self, rows: int) -> Tensors | None:
        """Texts as long as this handler lets through (``max_tokens`` tokens).

        NOTE: an encoder with fewer positions than ``max_tokens`` (MiniLM has 512) then
        fails its warm-up, and so its load, with the reason; warmed up on short texts it
        would load, and fail every pass that holds a long one.
        """
        made = placeholders(self.context.inputs, rows)
        longest = self._longest_text()
        for name in self.texts:
            made[name] = np.full(made[name].shape, longest, dtype=object)
        return made

    def _longest_text(self) -> str:
        words = max(self.max_tokens, 1)
        text = " ".join(["a"] * words)
        excess = len(self.tokenizer.encode(text).ids) - self.max_tokens
        if excess > 0:  # NOTE: refusing, the tokenizer cuts nothing: leave room for [CLS]...
            text = " ".join(["a"] * max(words - excess, 1))
        return text

    def decode_batch(self, requests: Sequence[Tensors]) -> list[Tensors]:
        """Every text of every request in one ``encode_batch`` call (parallel, in Rust);
        each request's token ids and mask per text input, padded to its longest text."""
        texts = [
            self._within_reach(name, str(text))
            for inputs in requests
            for name in self.texts
            for text in inputs[name]
        ]
        encodings = iter(self.tokenizer.encode_batch(texts, add_special_tokens=True))
        decoded = []
        for inputs in requests:
            tokens: Tensors = {}
            for name in self.texts:
                rows = [next(encodings) for _ in range(len(inputs[name]))]
                tokens |= self._arrays(name, rows)
            decoded.append(tokens)
        return decoded

    def _within_reach(self, name: str, text: str) -> str:
        """``text`` up to its ``max_tokens``-th word: every word is a token at least, so
        what follows is cut anyway (or refused), and tokenizing a megabyte of it would
        hold the pass for a second. Refusing, more words than that are a 422 at once."""
        if len(text) <= self.max_tokens:  # NOTE: too short for that many words
            return text
        words = _WORD.finditer(text)
        last = next(itertools.islice(words, self.max_tokens - 1, None), None)
        if last is None or next(words, None) is None:
            return text
        if self.refuse:
            raise InputError(
                f"input {name!r} has more than {self.max_tokens} words; this model takes at "
                f"most {self.max_tokens} tokens (longer text is refused, not cut)"
            )
        return text[: last.end()]

    def _arrays(self, name: str, rows: list[Encoding]) -> Tensors:
        longest = max(len(row.ids) for row in rows)
        if self.refuse and longest > self.max_tokens:
            raise InputError(
                f"input {name!r} is {longest} tokens long; this model takes at most "
                f"{self.max_tokens} (longer text is refused, not cut)"
            )
        ids = np.zeros((len(rows), longest), dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row.ids)] = row.ids
            mask[i, : len(row.ids)] = 1
        return {f"{name}.{IDS}": ids, f"{name}.{MASK}": mask}

    def embed(
        self, module: Callable[..., Any], inputs: Mapping[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        """One unit vector per row for each text input, from a single forward pass."""
        ids = [inputs[f"{name}.{IDS}"] for name in self.texts]
        masks = [inputs[f"{name}.{MASK}"] for name in self.texts]
        longest = max(t.shape[1] for t in ids)
        states = module(_padded(ids, longest), _padded(masks, longest))
        mask = _padded(masks, longest).unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        unit = torch.nn.functional.normalize(pooled, dim=-1)
        return list(unit.split([len(t) for t in ids]))


def _padded(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """Token tensors of several inputs as one batch, right-padded with 0 to ``length``."""
    padded = [torch.nn.functional.pad(t, (0, length - t.shape[1])) for t in tensors]
    return padded[0] if len(padded) == 1 else torch.cat(padded)


class SentenceEmbedding(SentenceEncoder):
    """One ``string`` input to one output: its embedding (384 floats for MiniLM)."""

    def predict(self, module: Callable[..., Any], inputs: Mapping[str, torch.Tensor]) -> Any:
        (embedding,) = self.embed(module, inputs)
        return embedding


class SentenceSimilarity(SentenceEncoder):
    """Two ``string`` inputs to one output: the cosine of their embeddings, -1 to 1."""

    def __init__(self, context: HandlerContext, **arguments: Any) -> None:
        super().__init__(context, **arguments)
        if len(self.texts) != 2:
            raise ValueError(f"similarity takes two 'string' inputs, not {self.texts}")

    def predict(self, module: Callable[..., Any], inputs: Mapping[str, torch.Tensor]) -> Any:
        first, second = self.embed(module, inputs)
        return (first * second).sum(dim=-1)
