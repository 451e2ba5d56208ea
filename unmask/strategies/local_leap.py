from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, StepView
from unmask.core.validators import integer, number
from unmask.strategies._select import top_k_mask


@frozen(kw_only=True)
class LocalLeapPolicy(Component):
    """Fast-dLLM's threshold with local determinism propagation: masked positions of the block with
    confidence >= ``tau`` are anchors, and every masked position within ``radius`` columns of an anchor
    commits at the relaxed threshold ``relaxed``; always the most confident one too.

    LocalLeap (Kong et al. 2025, "Accelerating Diffusion LLM Inference via Local Determinism
    Propagation", arXiv 2510.07081): tau 0.9, relaxed 0.75, radius 4. Anchors are positions masked before
    this step; with ``relaxed == tau`` or ``radius=0`` it is ``threshold:tau=tau``.
    """

    tau: float = field(default=0.9, validator=number(minimum=0, maximum=1))
    relaxed: float = field(default=0.75, validator=number(minimum=0, maximum=1))
    radius: int = field(default=4, validator=integer(minimum=0))

    def __attrs_post_init__(self) -> None:
        if self.relaxed > self.tau:
            raise ValueError(f"relaxed must be at most tau (a neighbour's threshold is the lower one), got "
                             f"relaxed={self.relaxed} > tau={self.tau}")

    def select(self, view: StepView) -> Commit:
        confidence = view.candidate_confidence
        top1 = top_k_mask(confidence, torch.ones_like(view.schedule_k), block=view.block)
        anchors = confidence >= self.tau
        near = anchors
        if self.radius > 0 and anchors.any():
            # Columns within radius of an anchor (2r + 1 wide, bounds inclusive).
            near = torch.nn.functional.max_pool1d(anchors[:, None].float(), kernel_size=2 * self.radius + 1,
                                                  stride=1, padding=self.radius)[:, 0] > 0
        return Commit.of(top1 | anchors | (near & (confidence >= self.relaxed)), view)
