from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.types import StepView
from unmask.strategies._select import top_k_mask


def _probability(instance: object, attribute: object, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{attribute.name} must be a number, got {value!r}")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must lie in [0, 1], got {value}")


@frozen(kw_only=True)
class ThresholdPolicy:
    """Commit every masked position of the block with confidence >= tau, and always the most confident one.

    Fast-dLLM's confidence-aware parallel decoding (Wu et al. 2025, arXiv 2505.22618; NVlabs/Fast-dLLM).
    """

    tau: float = field(default=0.9, validator=_probability)

    def select(self, view: StepView) -> torch.Tensor:
        confidence = view.candidate_confidence
        top1 = top_k_mask(confidence, torch.ones_like(view.schedule_k))
        return top1 | (confidence >= self.tau)
