from __future__ import annotations

from typing import Any

from attrs import define

from unmask.core.component import Component
from unmask.core.types import CanvasState, ForwardPlan


@define
class NoCache(Component):
    """Feed the whole canvas at every step and keep nothing: exact, and the baseline for caches.

    LLaDA's reference sampler (arXiv 2502.09992) runs the full canvas at every step.
    """

    def reset(self, model: Any = None) -> None:
        pass

    def plan(self, state: CanvasState) -> ForwardPlan:
        return ForwardPlan(start=0, end=state.input_ids.shape[1], attention_mask=state.attention_mask)
