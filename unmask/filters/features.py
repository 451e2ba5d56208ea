"""What a Learn2PD filter sees: a block's per-step statistics, and feature sets built from them.

Traces store :class:`BlockStats` (not features), so any feature set, built-in or a plug-in's, can be
computed from the same traces at training time and from the live step at decoding time.
"""

from __future__ import annotations

import torch
from attrs import frozen

from unmask.core.types import StepView, tensor_field

__all__ = ["BlockStats", "block_stats", "view_stats", "BlockConfidence", "PositionStats", "features"]


@frozen(kw_only=True)
class BlockStats:
    """The current block at one step, for N (row, step) records and block width W."""

    confidence: torch.Tensor = tensor_field()  # (N, W) float, top-1 probability at every block position
    entropy: torch.Tensor = tensor_field()  # (N, W) float, of the predictive distribution (nats)
    margin: torch.Tensor = tensor_field()  # (N, W) float, top-1 minus top-2 probability
    masked: torch.Tensor = tensor_field()  # (N, W) bool, still masked before this step's commits
    eos: torch.Tensor = tensor_field()  # (N, W) bool, the top-1 prediction is end-of-text
    step: torch.Tensor = tensor_field()  # (N,) long, step within the block

    TENSORS = ("confidence", "entropy", "margin", "masked", "eos", "step")

    @property
    def width(self) -> int:
        return self.confidence.shape[1]


def block_stats(logits: torch.Tensor, masked: torch.Tensor, step: int | torch.Tensor, eos_token_id: int) -> BlockStats:
    """Statistics of block logits (N, W, V); ``masked`` (N, W) marks positions not yet committed."""
    probs = torch.softmax(logits.double(), dim=-1)
    top = probs.topk(2, dim=-1)
    step = torch.as_tensor(step, dtype=torch.long).expand(logits.shape[0]).clone()
    return BlockStats(
        confidence=top.values[..., 0].float(), entropy=torch.special.entr(probs).sum(-1).float(),
        margin=(top.values[..., 0] - top.values[..., 1]).float(), masked=masked.clone(),
        eos=top.indices[..., 0] == eos_token_id, step=step,
    )


def view_stats(view: StepView) -> BlockStats:
    """The current block's statistics at a decoding step."""
    if view.logits is None:
        raise ValueError("Learn2PD features need the block's logits, but this step view has none")
    stats = block_stats(view.logits, view.masked[:, view.block_start:view.block_end], view.step, view.eos_token_id)
    fed = view.logits.shape[1]
    if fed == stats.masked.shape[1]:
        return stats
    # EoTP cut the canvas inside this block: the cut positions are end-of-text, final and certain.
    def pad(values: torch.Tensor, fill: float | bool) -> torch.Tensor:
        return torch.cat([values[:, :fed], values.new_full((len(values), stats.masked.shape[1] - fed), fill)], 1)

    return BlockStats(confidence=pad(stats.confidence, 1.0), entropy=pad(stats.entropy, 0.0),
                      margin=pad(stats.margin, 1.0), masked=stats.masked, eos=pad(stats.eos, True), step=stats.step)


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
        position = torch.arange(width, dtype=confidence.dtype).expand_as(confidence) / width
        step = (stats.step.to(confidence.dtype) / width)[:, None].expand_as(confidence)
        masked = stats.masked.to(confidence.dtype)
        remaining = masked.sum(1, keepdim=True)
        masked_fraction = (remaining / width).expand_as(confidence)
        masked_mean = ((confidence * masked).sum(1, keepdim=True) / remaining.clamp(min=1)).expand_as(confidence)
        columns = (confidence, stats.entropy, stats.margin, left, right, position, step, 1 - masked,
                   stats.eos.to(confidence.dtype), masked_fraction, masked_mean)
        return torch.stack(columns, dim=-1)  # (N, W, F)


def features(name: str, stats: BlockStats) -> torch.Tensor:
    """The registered feature set ``name`` applied to ``stats``: (N, W, F) float32."""
    from unmask.core.plugins import create

    values = create("features", name)(stats)
    if values.dim() != 3 or values.shape[:2] != stats.confidence.shape:
        raise ValueError(f"feature set {name!r} must return (N, W, F), got shape {tuple(values.shape)}")
    return values.float()
