"""WINO: wide in, narrow out. Draft with a low threshold, and in the same forward take back drafted tokens that
a leave-one-out prediction no longer supports.

Hong et al. 2025, "Wide-In, Narrow-Out: Revokable Decoding for Efficient and Effective DLLMs" (arXiv
2507.18578), after ``decoding_wino`` of Feng-Hong/WINO-DLLM (shared/METHODS.md H).
"""

from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, StepView
from unmask.core.validators import number
from unmask.strategies._select import top_k_mask

FIRST_LAST_ACCEPT = 30  # the reference's previous-step count at a block's start


@frozen(kw_only=True)
class WinoPolicy(Component):
    """Drafts the block's masked positions surer than ``threshold`` and returns to the mask its earlier drafts
    whose leave-one-out probability fell below ``threshold_back``, in one forward per step. Per row:

    1. **Draft** the masked block positions whose confidence is above ``threshold`` (strictly), at most
       min(max(floor(0.7 M), 5), 20) of them for M masks (the most confident), at least the most confident one.
    2. **Verify**, when more than one was drafted: a position of the block written at an earlier step whose
       token has leave-one-out probability below ``threshold_back`` (strictly) returns to the mask; when that
       would be as many as the previous step drafted (30 at a block's first step), only the previous count
       minus one with the lowest probabilities do.

    The leave-one-out probability comes from the step's own forward: a masked copy of the block is appended,
    each copy position seeing everything but its twin (``Component.leave_one_out``), so a step costs one
    forward. A step takes back fewer than the previous one drafted, so a block of W positions takes at most W
    forwards. ``threshold >= 1`` is one token per step (``topk:k=1``); ``threshold_back <= 0`` takes nothing
    back (capped threshold decoding). Needs ``cache="none"`` and a model that takes 4-D masks.

    Hong et al. 2025, "Wide-In, Narrow-Out: Revokable Decoding for Efficient and Effective DLLMs" (arXiv
    2507.18578), ``decoding_wino`` of Feng-Hong/WINO-DLLM.
    """

    leave_one_out = True  # (Component's declaration: the engine appends the copy)

    threshold: float = field(default=0.6, validator=number(minimum=0.0))
    threshold_back: float = field(default=0.9, validator=number(minimum=0.0))

    def select(self, view: StepView) -> Commit:
        if view.leave_one_out is None or view.commit_step is None:
            raise ValueError("wino needs the engine's leave-one-out predictions and commit steps")
        candidates = view.masked & view.window
        confidence = view.confidence.masked_fill(~candidates, float("-inf"))
        masks = candidates.sum(1)
        cap = torch.clamp(masks * 7 // 10, min=5, max=20)
        above = (confidence > self.threshold).sum(1)
        accepted = torch.clamp(torch.minimum(above, cap), min=1) * view.row_active
        draft = top_k_mask(confidence, accepted, block=view.block)
        written = view.window & ~view.masked & (view.commit_step >= 0)
        verifying = (accepted > 1) & written.any(1)
        if not verifying.any():
            return Commit(mask=draft, tokens=view.x0)
        start, end = view.block
        probabilities = torch.softmax(view.leave_one_out.double(), dim=-1)
        own = probabilities.gather(-1, view.x[:, start:end, None])[..., 0]  # (B, W): p(current token)
        support = torch.full(view.x.shape, float("inf"), dtype=torch.float64, device=view.x.device)
        support[:, start:end] = own
        support = support.masked_fill(~written, float("inf"))
        weak = (support < self.threshold_back) & verifying[:, None]
        previous = (view.commit_step == view.global_step - 1) & view.window
        last = torch.full_like(accepted, FIRST_LAST_ACCEPT) if view.step == 0 else previous.sum(1)
        count = torch.where(weak.sum(1) >= last, last - 1, weak.sum(1)).clamp(min=0)
        remask = top_k_mask(-support.masked_fill(~weak, float("inf")), count, block=view.block)
        return Commit(mask=draft, tokens=view.x0, remask=remask if remask.any() else None)
