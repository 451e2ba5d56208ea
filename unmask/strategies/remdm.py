from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, StepView
from unmask.core.validators import integer, optional
from unmask.strategies._select import top_k_mask


@frozen(kw_only=True)
class ReMDMPolicy(Component):
    """ReMDM's sampler for LLaDA: committed tokens return to the mask in a loop, so more forwards buy revisions.

    Per block of W answer positions: one token per step (the most confident) until ``start`` = max(min(7W/8,
    W - 1), 1) are committed; then ``loop_steps`` steps (default W) that each commit the ``number`` most
    confident masked positions and return the ``number`` committed positions of the block with the lowest
    confidence at their commit to the mask; then one token per step to the block's end. The reference
    re-masks before a step's forward; here the step before names them (``Commit.remask``), so the forwards see
    the same canvases, except that a position committed in that step is not yet a choice to re-mask. The
    engine bounds how often one position returns (``REMASKS_PER_POSITION``), which may end a loop early.
    ``number=0`` is one token per step (``topk:k=1``), without the loop's forwards (the reference spends them
    re-masking nothing).

    Wang, Schiff, Sahoo, Kuleshov 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling"
    (arXiv 2503.00307), LLaDA variant of guanghanwang/ReMDM-LLaDA ``llada_remdm_sample``, with
    ParallelBench's ``remdm_steps`` loop length; greedy here (the engine's temperature samples tokens).
    """

    number: int = field(default=1, validator=integer(minimum=0))
    loop_steps: int | None = field(default=None, validator=optional(integer(minimum=0)))

    def select(self, view: StepView) -> Commit:
        answer = view.window & view.in_answer
        width = answer.sum(1)  # (B,) the row's answer positions in this block
        start = torch.clamp(torch.minimum(width * 7 // 8, width - 1), min=1)
        loop = width if self.loop_steps is None else torch.full_like(width, self.loop_steps)
        step = view.step
        looping = (start <= step) & (step < start + loop) & view.row_active
        count = torch.where(looping, torch.full_like(width, self.number), torch.ones_like(width))
        fill = top_k_mask(view.candidate_confidence, count, block=view.block)
        # Named now for the next step's forward: from the step before the loop to its last but one step.
        returning = (start - 1 <= step) & (step < start + loop - 1) & view.row_active & (self.number > 0)
        committed = answer & ~view.masked
        if view.commit_confidence is None or not (returning & committed.any(1)).any():
            return Commit.of(fill, view)
        lowest = -view.commit_confidence.masked_fill(~committed, float("inf"))
        remask = top_k_mask(lowest, torch.where(returning, torch.full_like(width, self.number), 0), block=view.block)
        return Commit(mask=fill, tokens=view.x0, remask=remask if remask.any() else None)
