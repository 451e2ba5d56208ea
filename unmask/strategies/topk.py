from __future__ import annotations

from typing import ClassVar

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, StepView
from unmask.core.validators import integer, optional
from unmask.strategies._select import top_k_mask


@frozen(kw_only=True)
class TopKPolicy(Component):
    """Commit the k most confident masked positions of the block, k from the linear schedule unless given.

    LLaDA's low-confidence remasking (Nie et al. 2025, arXiv 2502.09992; ML-GSAI/LLaDA generate.py).
    """

    k: int | None = field(default=None, validator=optional(integer(minimum=1)))

    def select(self, view: StepView) -> Commit:
        k = view.schedule_k if self.k is None else torch.full_like(view.schedule_k, self.k)
        return Commit.of(top_k_mask(view.candidate_confidence, k, block=view.block), view)


@frozen(kw_only=True)
class RandomPolicy(Component):
    """Commit k masked positions of the block chosen uniformly at random, k from the linear schedule.

    LLaDA's random remasking (arXiv 2502.09992); draws from the decode's seeded generator.
    """

    k: int | None = field(default=None, validator=optional(integer(minimum=1)))
    stochastic: ClassVar[bool] = True  # draws from the decode's shared random stream

    def select(self, view: StepView) -> Commit:
        if view.generator is None:
            raise ValueError("the random policy needs view.generator (the decode's seeded generator)")
        noise = torch.rand(view.x.shape, generator=view.generator, device=view.x.device)
        scores = noise.masked_fill(~view.candidates, float("-inf"))
        k = view.schedule_k if self.k is None else torch.full_like(view.schedule_k, self.k)
        return Commit.of(top_k_mask(scores, k, block=view.block), view)
