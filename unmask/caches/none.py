from __future__ import annotations

from typing import Any

from attrs import define

from unmask.core.types import CanvasState, ForwardPlan


@define
class NoCache:
    """Feed the whole canvas at every step and keep nothing: exact, and the baseline for caches."""

    def reset(self, model: Any = None) -> None:
        pass

    def plan(self, state: CanvasState) -> ForwardPlan:
        return ForwardPlan(start=0, end=state.input_ids.shape[1], attention_mask=state.attention_mask)

    def update(self, plan: ForwardPlan, state: CanvasState) -> None:
        pass
