from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, StepView
from unmask.core.validators import number
from unmask.strategies._select import block_values


def block_entropy(view: StepView) -> torch.Tensor:
    """(B, W) entropy of the predictive distribution at each block position."""
    if view.logits is None:
        raise ValueError("this component needs view.logits (the block's logits)")
    # entr(p) = -p log p, taken as 0 where p = 0 (a -inf logit), where p * log p would give NaN.
    return torch.special.entr(torch.softmax(view.logits.float(), dim=-1)).sum(-1)


@frozen(kw_only=True)
class EntropyBoundPolicy(Component):
    """Commit the lowest-entropy masked positions while their summed entropy minus its maximum stays <= bound.

    The EB-sampler (Ben-Hamu et al. 2025, arXiv 2505.24857); at least one position per step.
    """

    bound: float = field(default=0.1, validator=number(minimum=0))

    def select(self, view: StepView) -> Commit:
        entropy = block_values(view.x.shape, block_entropy(view), view.block_start, float("inf"))
        entropy = entropy.masked_fill(~view.candidates, float("inf"))
        ordered, order = entropy.sort(dim=1)  # ascending; non-candidates (inf) last
        # cumsum - cummax never decreases along ascending entropies, so "<= bound" keeps a prefix.
        excess = ordered.cumsum(1) - ordered.cummax(1).values
        keep = torch.isfinite(ordered) & (excess <= self.bound)
        return Commit.of(torch.zeros_like(keep).scatter_(1, order, keep), view)
