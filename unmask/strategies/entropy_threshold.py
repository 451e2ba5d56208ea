from __future__ import annotations

import math
from typing import Any

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.scoring import column_chunks
from unmask.core.types import Commit, StepView
from unmask.strategies._select import top_k_mask


def _bound(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{attribute.name} must be a number (negative: one token per step, inf: the whole "
                         f"block), got {value!r}")


@frozen(kw_only=True)
class EntropyThresholdPolicy(Component):
    """Commit the masked position of the block with the lowest entropy, and every one whose entropy is at
    most ``h`` (below ``h`` with ``strict``).

    dParallel's decoder (Chen et al. 2025, "dParallel: Learnable Parallel Decoding for dLLMs", arXiv
    2509.26488; czg1225/dParallel): H = -sum p log(p + 1e-12) over the softmax in float64; h = 0.5 for
    LLaDA (H <= h), 0.45 strict for Dream (H < h). A negative ``h`` commits one token per step.
    """

    h: float = field(default=0.5, validator=_bound)
    strict: bool = field(default=False)

    def select(self, view: StepView) -> Commit:
        if view.logits is None:
            raise ValueError("entropy_threshold needs the block's logits (view.logits)")
        entropy = torch.full(view.x.shape, math.inf, dtype=torch.float64, device=view.x.device)
        block = view.logits
        for columns in column_chunks(block.shape[1]):  # float64 a few columns at a time
            probability = torch.softmax(block[:, columns].double(), dim=-1)
            start = view.block_start + columns.start
            entropy[:, start:start + probability.shape[1]] = -(probability * (probability + 1e-12).log()).sum(-1)
        entropy = entropy.masked_fill(~view.candidates, math.inf)
        lowest = top_k_mask(-entropy, torch.ones_like(view.schedule_k), block=view.block)
        passes = entropy < self.h if self.strict else entropy <= self.h
        return Commit.of(view.candidates & (lowest | passes), view)
