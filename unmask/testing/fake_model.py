"""A deterministic toy denoiser: one bidirectional attention layer, so predictions depend on the canvas."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FakeDenoiser(nn.Module):
    """A seeded, tiny transformer that implements the ``DenoiserModel`` protocol.

    Its predictions change as the canvas fills in, so committing many positions at once can be wrong,
    as with a real dLLM. ``eos_bias`` raises the EOS logit at positions ``>= eos_from`` (EoTP tests).
    """

    def __init__(
        self,
        vocab_size: int = 24,
        hidden_size: int = 32,
        max_positions: int = 256,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        eos_bias: float = 0.0,
        eos_from: int = 0,
    ) -> None:
        super().__init__()
        if vocab_size < 4:
            raise ValueError(f"vocab_size must be at least 4, got {vocab_size}")
        self.vocab_size = vocab_size
        self.mask_token_id = vocab_size - 1
        self.eos_token_id = vocab_size - 2
        self.shift_logits = False
        self.accepts_pair_mask = True  # (B, 1, L, L) additive masks too: the leave-one-out forward
        self.eos_bias, self.eos_from = eos_bias, eos_from
        generator = torch.Generator().manual_seed(seed)
        self.tokens = nn.Embedding(vocab_size, hidden_size)
        self.positions = nn.Embedding(max_positions, hidden_size)
        self.query, self.key, self.value, self.out = (nn.Linear(hidden_size, hidden_size) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(hidden_size, 2 * hidden_size), nn.GELU(), nn.Linear(2 * hidden_size, hidden_size))
        self.head = nn.Linear(hidden_size, vocab_size)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            # A softer head spreads confidences over (0, 1), so thresholds matter.
            self.head.weight.mul_(0.1)
            self.head.bias[self.mask_token_id] = -1e4  # like a trained dLLM, never predict [MASK]
        self.to(dtype)
        self.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        if past_key_values is not None:
            raise ValueError("FakeDenoiser does not take past_key_values")
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
        hidden = self.tokens(input_ids) + self.positions(position_ids)
        scores = self.query(hidden) @ self.key(hidden).transpose(1, 2) / hidden.shape[-1] ** 0.5  # (B, L, L)
        if attention_mask is not None and attention_mask.dim() == 4:  # (B, 1, L, L) additive
            scores = scores + attention_mask[:, 0].to(scores.dtype)
        elif attention_mask is not None:
            scores = scores.masked_fill(attention_mask[:, None, :] == 0, float("-inf"))
        hidden = hidden + self.out(torch.softmax(scores, dim=-1) @ self.value(hidden))
        hidden = hidden + self.mlp(hidden)
        logits = self.head(hidden)
        if self.eos_bias:
            boost = torch.zeros_like(logits)
            boost[..., self.eos_token_id] = self.eos_bias * (position_ids >= self.eos_from)
            logits = logits + boost
        return logits


class FakeTokenizer:
    """The text of a :class:`FakeDenoiser`'s tokens (vocabulary 24), for constraints: words, digits and
    JSON punctuation, then EOS and the mask as special tokens. ``words`` gives other words (token i is
    ``words[i]``; the model's vocabulary is then ``len(words) + 2``)."""

    WORDS = ("{", "}", "[", "]", ":", ",", '"', " ", "a", "b", "x", "y", "ab", "0", "1", "2", "-", ".", "true",
             "false", "null", " a")

    def __init__(self, vocab_size: int | None = None, words: Any = None) -> None:
        if words is not None:
            self.WORDS = tuple(words)
        if vocab_size is None:
            vocab_size = len(self.WORDS) + 2
        if vocab_size != len(self.WORDS) + 2:
            raise ValueError(f"FakeTokenizer covers a FakeDenoiser of vocab_size {len(self.WORDS) + 2}")
        self.eos_token_id, self.mask_token_id = vocab_size - 2, vocab_size - 1
        self.all_special_ids = [vocab_size - 2, vocab_size - 1]

    def __len__(self) -> int:
        return len(self.WORDS) + 2

    def decode(self, ids: Any) -> str:
        return "".join(self.WORDS[i] for i in ids if i < len(self.WORDS))

    def batch_decode(self, batch: Any) -> list[str]:
        return [self.decode(ids) for ids in batch]


class RecordingModel:
    """Any denoiser, with the shape (rows, columns) of every forward's ``input_ids`` recorded in ``fed``: what a
    test counts to see how many forwards ran and how many rows and columns each was given."""

    def __init__(self, model: Any) -> None:
        self.model, self.fed = model, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        self.fed.append(tuple(input_ids.shape))
        return self.model(input_ids, **kwargs)
