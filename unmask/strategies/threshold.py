from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, StepView
from unmask.core.validators import number
from unmask.strategies._select import top_k_mask


@frozen(kw_only=True)
class ThresholdPolicy(Component):
    """Commit every masked position of the block with confidence >= tau, and always the most confident one.

    Fast-dLLM's confidence-aware parallel decoding (Wu et al. 2025, arXiv 2505.22618; NVlabs/Fast-dLLM).
    """

    tau: float = field(default=0.9, validator=number(minimum=0, maximum=1))

    def select(self, view: StepView) -> Commit:
        confidence = view.candidate_confidence
        top1 = top_k_mask(confidence, torch.ones_like(view.schedule_k), block=view.block)
        return Commit.of(top1 | (confidence >= self.tau), view)
