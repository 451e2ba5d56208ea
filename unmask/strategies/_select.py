"""Selection helpers shared by policies."""

from __future__ import annotations

import torch


def top_k_mask(scores: torch.Tensor, k: torch.Tensor, block: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, L) scores, (B,) counts -> (B, L) bool marking each row's k highest finite scores.

    ``block``: rank only columns ``[start, end)`` (scores elsewhere are ignored). Ties are then broken as
    torch.topk breaks them over the block, as Fast-dLLM's loops rank it, not over the whole canvas row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    start, end = block if block is not None else (0, scores.shape[1])
    ranked = scores[:, start:end]
    k = torch.minimum(k, torch.isfinite(ranked).sum(1))
    k_max = int(k.max()) if k.numel() else 0
    if k_max == 0:
        return mask
    indices = ranked.topk(k_max, dim=1).indices  # (B, k_max), most confident first
    keep = torch.arange(k_max, device=scores.device)[None, :] < k[:, None]
    mask[:, start:end] = torch.zeros_like(ranked, dtype=torch.bool).scatter_(1, indices, keep)
    return mask


def block_values(view_like_shape: torch.Size, values: torch.Tensor, block_start: int, fill: float) -> torch.Tensor:
    """Place (B, W) block values into a (B, L) tensor filled with ``fill`` elsewhere."""
    full = torch.full(view_like_shape, fill, dtype=values.dtype, device=values.device)
    full[:, block_start:block_start + values.shape[1]] = values
    return full

