"""dParallel's certainty-forcing distillation, its two tested pieces: the semi-autoregressive masks of a
complementary pair, and the loss (cross-entropy plus the entropy of predictions that are already right).

The model learns from its own decoding trajectories: each answer is cut at a random block; blocks before it
stay clean, every position after it is masked, and inside it each token is masked with probability about 0.5
in one copy and exactly the others in the twin copy, so every token of the active block is a target once. The
entropy term (temperature 0.5) sharpens the predictions that are already correct, which is what lets a
threshold rule commit many of them per step.

Chen et al. 2025, "dParallel: Learnable Parallel Decoding for dLLMs" (arXiv 2509.26488), after
``LLaDA/llada_train.py`` of its code (shared/METHODS.md E.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["certainty_masks", "certainty_forcing_loss", "MASK_PROBABILITY"]

# The authors' active-block mask probability: (1 - eps) * 0.5 + eps with eps = 1e-3.
MASK_PROBABILITY = (1 - 1e-3) * 0.5 + 1e-3


def certainty_masks(prompt_lengths: torch.Tensor, width: int, block: int, generator: torch.Generator,
                    probability: float = MASK_PROBABILITY) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, width) bool masks of a complementary pair for rows whose answers start at ``prompt_lengths`` (B,)
    and run to ``width`` (padding included). Per row an active block n is drawn uniformly from the answer's
    blocks of ``block`` tokens (the last one runs to the end); answer blocks before it stay clean, every
    position after it is masked in both copies, and inside it the first copy masks each token with
    ``probability`` and the second exactly the others."""
    if (prompt_lengths < 0).any() or (prompt_lengths >= width).any():
        raise ValueError(f"prompt_lengths must leave at least one answer position in a width of {width}")
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    rows = len(prompt_lengths)
    answer = width - prompt_lengths  # (B,)
    last = (answer - 1) // block  # the last block's index (it may be partial)
    active = (torch.rand(rows, generator=generator) * (last + 1)).long().clamp(max=last)  # uniform in [0, last]
    start = prompt_lengths + active * block
    end = torch.where(active == last, torch.full_like(start, width), start + block)
    columns = torch.arange(width)[None, :]
    inside = (columns >= start[:, None]) & (columns < end[:, None])
    later = columns >= end[:, None]
    drawn = torch.rand(rows, width, generator=generator) < probability
    return later | (inside & drawn), later | (inside & ~drawn)


def certainty_forcing_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, *, beta: float,
                           temperature: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss on one copy: mean cross-entropy over ``masked`` positions (B, L) of ``logits`` (B, L, V)
    against ``targets`` (B, L), plus ``beta`` times the mean entropy of softmax(logits / ``temperature``) over
    the masked positions whose argmax already equals the target (none: no entropy term). Returns the loss and
    its parts (``ce``, ``entropy``, ``correct``: how many positions the entropy averaged)."""
    if logits.shape[:2] != targets.shape or masked.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and masked "
                         f"{tuple(masked.shape)} must agree on (B, L)")
    if not masked.any():
        zero = logits.sum() * 0.0
        return zero, {"ce": 0.0, "entropy": 0.0, "correct": 0}
    chosen, wanted = logits[masked].float(), targets[masked]
    ce = F.cross_entropy(chosen, wanted)
    correct = chosen.argmax(-1) == wanted
    entropy = chosen.new_zeros(())
    if correct.any():
        log_p = F.log_softmax(chosen[correct] / temperature, dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1).mean()
    loss = ce + beta * entropy
    return loss, {"ce": float(ce.detach()), "entropy": float(entropy.detach()), "correct": int(correct.sum())}
