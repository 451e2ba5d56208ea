"""What a Learn2PD filter sees: a block's per-step statistics, and feature sets built from them.

Traces store :class:`BlockStats` (not features), so any feature set, built-in or a plug-in's, can be
computed from the same traces at training time and from the live step at decoding time.
"""

from __future__ import annotations

import torch
from attrs import frozen

from unmask.core.types import StepView, tensor_field

__all__ = ["BlockStats", "block_stats", "view_stats", "BlockConfidence", "PositionStats", "PositionConflicts",
           "features"]


@frozen(kw_only=True)
class BlockStats:
    """The current block at one step, for N (row, step) records and block width W."""

    confidence: torch.Tensor = tensor_field()  # (N, W) float, top-1 probability at every block position
    entropy: torch.Tensor = tensor_field()  # (N, W) float, of the predictive distribution (nats)
    margin: torch.Tensor = tensor_field()  # (N, W) float, top-1 minus top-2 probability
    masked: torch.Tensor = tensor_field()  # (N, W) bool, still masked before this step's commits
    eos: torch.Tensor = tensor_field()  # (N, W) bool, the top-1 prediction is end-of-text
    step: torch.Tensor = tensor_field()  # (N,) long, step within the block
    tokens: torch.Tensor = tensor_field()  # (N, W) long, committed tokens and this step's top-1 predictions

    TENSORS = ("confidence", "entropy", "margin", "masked", "eos", "step", "tokens")

    @property
    def width(self) -> int:
        return self.confidence.shape[1]


def block_stats(logits: torch.Tensor, masked: torch.Tensor, step: int | torch.Tensor, eos_token_id: int,
                tokens: torch.Tensor | None = None) -> BlockStats:
    """Statistics of block logits (N, W, V); ``masked`` (N, W) marks positions not yet committed; ``tokens``
    (N, W) holds the committed tokens (default: the top-1 predictions everywhere)."""
    probs = torch.softmax(logits.double(), dim=-1)
    top = probs.topk(2, dim=-1)
    step = torch.as_tensor(step, dtype=torch.long).expand(logits.shape[0]).clone()
    predicted = top.indices[..., 0]
    return BlockStats(
        confidence=top.values[..., 0].float(), entropy=torch.special.entr(probs).sum(-1).float(),
        margin=(top.values[..., 0] - top.values[..., 1]).float(), masked=masked.clone(),
        eos=predicted == eos_token_id, step=step,
        tokens=predicted.clone() if tokens is None else torch.where(masked, predicted, tokens),
    )


def view_stats(view: StepView) -> BlockStats:
    """The current block's statistics at a decoding step."""
    if view.logits is None:
        raise ValueError("Learn2PD features need the block's logits, but this step view has none")
    fed = view.logits.shape[1]
    fed_columns = slice(view.block_start, view.block_start + fed)
    stats = block_stats(view.logits, view.masked[:, fed_columns], view.step, view.eos_token_id,
                        tokens=view.x0[:, fed_columns])
    masked = view.masked[:, view.block_start:view.block_end]
    if fed == masked.shape[1]:
        return stats
    # EoTP cut the canvas inside this block: the cut positions are end-of-text, final and certain.
    def pad(values: torch.Tensor, fill: float | bool | int) -> torch.Tensor:
        return torch.cat([values, values.new_full((len(values), masked.shape[1] - fed), fill)], 1)

    return BlockStats(confidence=pad(stats.confidence, 1.0), entropy=pad(stats.entropy, 0.0),
                      margin=pad(stats.margin, 1.0), masked=masked.clone(), eos=pad(stats.eos, True), step=stats.step,
                      tokens=pad(stats.tokens, view.eos_token_id))


@frozen(kw_only=True)
class BlockConfidence:
    """The block's confidence vector, committed positions included: Learn2PD's filter input.

    Bao et al. 2025, "Learning to Parallel" (arXiv 2509.25188): a W-vector per (block, step).
    """

    names = ("confidence",)

    def __call__(self, stats: BlockStats) -> torch.Tensor:
        return stats.confidence[..., None]  # (N, W, 1)


@frozen(kw_only=True)
class PositionStats:
    """Per-position statistics: confidence, entropy, margin, neighbours' confidences, place, step, state.

    The richer set for per-position filters (gradient boosting): what a position's own prediction
    looks like, how sure its neighbours are, where it sits, and how far the block has come.
    Source: unmask, extending Learn2PD's confidence input (arXiv 2509.25188).
    """

    names = ("confidence", "entropy", "margin", "left_confidence", "right_confidence", "position",
             "step", "committed", "eos", "masked_fraction", "masked_mean_confidence")

    def __call__(self, stats: BlockStats) -> torch.Tensor:
        width = stats.width
        confidence = stats.confidence
        ones = torch.ones_like(confidence[:, :1])
        left = torch.cat([ones, confidence[:, :-1]], dim=1)  # the block edge counts as certain
        right = torch.cat([confidence[:, 1:], ones], dim=1)
        position = torch.arange(width, dtype=confidence.dtype, device=confidence.device).expand_as(confidence) / width
        step = (stats.step.to(confidence.dtype) / width)[:, None].expand_as(confidence)
        masked = stats.masked.to(confidence.dtype)
        remaining = masked.sum(1, keepdim=True)
        masked_fraction = (remaining / width).expand_as(confidence)
        masked_mean = ((confidence * masked).sum(1, keepdim=True) / remaining.clamp(min=1)).expand_as(confidence)
        columns = (confidence, stats.entropy, stats.margin, left, right, position, step, 1 - masked,
                   stats.eos.to(confidence.dtype), masked_fraction, masked_mean)
        return torch.stack(columns, dim=-1)  # (N, W, F)


@frozen(kw_only=True)
class PositionConflicts(PositionStats):
    """:class:`PositionStats` plus how a position's token agrees with the rest of the block.

    Parallel commits go wrong where positions compete for one answer: two places of a permutation both
    predict the same name. ``repeats`` counts the other block positions holding the same token (committed or
    predicted); ``outranked`` says one of them is committed or more confident, so committing this one now
    would likely duplicate it. Source: unmask.
    """

    names = PositionStats.names + ("repeats", "outranked")

    def __call__(self, stats: BlockStats) -> torch.Tensor:
        tokens, masked = stats.tokens, stats.masked
        # A committed position outranks every masked one; ties go to the left position.
        rank = torch.where(masked, stats.confidence, torch.full_like(stats.confidence, 2.0))
        same = tokens[:, :, None] == tokens[:, None, :]
        same &= ~torch.eye(stats.width, dtype=torch.bool, device=tokens.device)
        left = torch.ones(stats.width, stats.width, dtype=torch.bool, device=tokens.device).tril(-1)  # j left of i
        stronger = (rank[:, None, :] > rank[:, :, None]) | ((rank[:, None, :] == rank[:, :, None]) & left)
        repeats = same.sum(-1).to(stats.confidence.dtype)
        outranked = (same & stronger).any(-1).to(stats.confidence.dtype)
        return torch.cat([super().__call__(stats), repeats[..., None], outranked[..., None]], dim=-1)


def features(name: str, stats: BlockStats) -> torch.Tensor:
    """The registered feature set ``name`` applied to ``stats``: (N, W, F) float32."""
    from unmask.core.plugins import create

    values = create("features", name)(stats)
    if values.dim() != 3 or values.shape[:2] != stats.confidence.shape:
        raise ValueError(f"feature set {name!r} must return (N, W, F), got shape {tuple(values.shape)}")
    return values.float()
