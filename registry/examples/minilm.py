"""A BERT encoder for the sentence-embedding model all-MiniLM-L6-v2, without ``transformers``.

The submodule and parameter names copy Hugging Face's ``BertModel`` so the published
``model.safetensors`` loads with ``strict=True``: a strict load is the check that every
weight found its place. Inference only, so there is no dropout. The module returns token
states; mean pooling and normalisation belong to the handler, which holds the mask.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn


class Embeddings(nn.Module):
    """Word plus position plus token-type embeddings, then LayerNorm."""

    position_ids: Tensor

    def __init__(
        self, vocab_size: int, hidden: int, max_positions: int, type_vocab_size: int, eps: float
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        # NOTE: persistent because the published state dict holds it; a strict load
        # would otherwise fail on an unexpected key.
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0))

    def forward(self, input_ids: Tensor) -> Tensor:
        tokens = input_ids.shape[1]
        positions = self.position_embeddings(self.position_ids[:, :tokens])
        # Every token is segment 0 (single sentences), so one row broadcasts over all.
        segment = self.token_type_embeddings.weight[0]
        embedded: Tensor = self.word_embeddings(input_ids) + positions + segment
        return self.LayerNorm(embedded)  # type: ignore[no-any-return]


class SelfAttention(nn.Module):
    """Multi-head attention through SDPA, which picks the fused CPU or GPU kernel."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def _split(self, x: Tensor) -> Tensor:
        batch, tokens, hidden = x.shape
        return x.view(batch, tokens, self.heads, hidden // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        batch, tokens, hidden = x.shape
        heads = nn.functional.scaled_dot_product_attention(
            self._split(self.query(x)),
            self._split(self.key(x)),
            self._split(self.value(x)),
            attn_mask=mask,
        )
        return heads.transpose(1, 2).reshape(batch, tokens, hidden)


class Residual(nn.Module):
    """Projection, then LayerNorm over the sum with the block's input (post-norm BERT)."""

    def __init__(self, inp: int, out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inp, out)
        self.LayerNorm = nn.LayerNorm(out, eps=eps)

    def forward(self, x: Tensor, shortcut: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + shortcut)  # type: ignore[no-any-return]


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = SelfAttention(hidden, heads)
        self.output = Residual(hidden, hidden, eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.self(x, mask), x)  # type: ignore[no-any-return]


class Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: Tensor) -> Tensor:
        # The exact (erf) GELU: BERT's config says "gelu", which names this form, not tanh.
        return nn.functional.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = Attention(hidden, heads, eps)
        self.intermediate = Intermediate(hidden, intermediate)
        self.output = Residual(intermediate, hidden, eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        attended: Tensor = self.attention(x, mask)
        return self.output(self.intermediate(attended), attended)  # type: ignore[no-any-return]


class Encoder(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(hidden, heads, intermediate, eps) for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Pooler(nn.Module):
    """Kept only so the published weights load strictly; sentence embeddings never use it.

    The checkpoint carries BERT's ``pooler.dense`` (the [CLS] head from pre-training), but
    all-MiniLM-L6-v2 mean-pools the token states instead, so no forward pass reads it.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2's BERT body: ``(input_ids, attention_mask)`` to token states.

    Rows may be right-padded (mask 0) and the token axis may change from call to call;
    padded keys are masked out, so a row's real tokens come out as they would alone.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 30522,
        hidden: int = 384,
        layers: int = 6,
        heads: int = 12,
        intermediate: int = 1536,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.embeddings = Embeddings(
            vocab_size, hidden, max_positions, type_vocab_size, layer_norm_eps
        )
        self.encoder = Encoder(layers, hidden, heads, intermediate, layer_norm_eps)
        self.pooler = Pooler(hidden)  # unused in forward: see Pooler

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.embeddings(input_ids)
        # Additive mask over keys, [batch, 1, 1, tokens]: 0 for real tokens, the dtype's
        # minimum (not -inf, so an all-padding row stays finite) for padding.
        padding = attention_mask[:, None, None, :] == 0
        mask = torch.zeros(padding.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(padding, torch.finfo(x.dtype).min)
        return self.encoder(x, mask)  # type: ignore[no-any-return]


def token_batch(tokenizer: Tokenizer, texts: list[str]) -> tuple[Tensor, Tensor]:
    """Texts as token ids right-padded with 0 to the longest, and their attention mask,
    from one ``encode_batch`` call: the encoder's inputs, for benchmarks and peers that
    run it without this project's handler (``registry.handlers.text``)."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
    longest = max(len(e.ids) for e in encodings)
    ids = torch.zeros((len(texts), longest), dtype=torch.int64)
    mask = torch.zeros((len(texts), longest), dtype=torch.int64)
    for i, encoding in enumerate(encodings):
        ids[i, : len(encoding.ids)] = torch.tensor(encoding.ids)
        mask[i, : len(encoding.ids)] = 1
    return ids, mask
