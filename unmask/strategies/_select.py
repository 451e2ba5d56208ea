"""Selection helpers shared by policies."""

from __future__ import annotations

import torch


def top_k_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, L) scores, (B,) counts -> (B, L) bool marking each row's k highest finite scores."""
    k = torch.minimum(k, torch.isfinite(scores).sum(1))
    mask = torch.zeros_like(scores, dtype=torch.bool)
    k_max = int(k.max()) if k.numel() else 0
    if k_max == 0:
        return mask
    indices = scores.topk(k_max, dim=1).indices  # (B, k_max), most confident first
    keep = torch.arange(k_max, device=scores.device)[None, :] < k[:, None]
    return mask.scatter_(1, indices, keep)


def block_values(view_like_shape: torch.Size, values: torch.Tensor, block_start: int, fill: float) -> torch.Tensor:
    """Place (B, W) block values into a (B, L) tensor filled with ``fill`` elsewhere."""
    full = torch.full(view_like_shape, fill, dtype=values.dtype, device=values.device)
    full[:, block_start:block_start + values.shape[1]] = values
    return full

