"""An unmask plug-in from outside the project: two unmask policies and a stop criterion.

Installed with ``pip install -e examples/unmask-plugin-example``, its entry point (group ``unmask``)
registers ``margin``, ``all_in`` and ``confident_finish``; ``unmask list`` shows them with this package
as provider.
"""

from __future__ import annotations

import torch
from attrs import field, frozen

import unmask
from unmask import StepView, StopDecision

__all__ = ["MarginPolicy", "AllInPolicy", "ConfidentFinishStop"]


def _fraction(instance: object, attribute: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must lie in [0, 1], got {value}")


@frozen(kw_only=True)
class MarginPolicy:
    """Rank masked positions by margin (top-1 minus top-2 probability): commit the schedule's k best,
    and every position whose margin is at least ``gap``.

    Dream's ``topk_margin`` confidence (Ye et al. 2025, arXiv 2508.15487), with a Fast-dLLM-style
    threshold on it.
    """

    gap: float = field(default=0.8, validator=_fraction)

    def select(self, view: StepView) -> torch.Tensor:
        probabilities = torch.softmax(view.logits.double(), dim=-1)  # (B, W, V) over the block
        top2 = probabilities.topk(2, dim=-1).values
        margin = torch.full(view.x.shape, float("-inf"), dtype=torch.float64, device=view.x.device)
        margin[:, view.block_start:view.block_end] = top2[..., 0] - top2[..., 1]
        margin = margin.masked_fill(~view.candidates, float("-inf"))
        # The k largest margins per row (k from the schedule), ties broken by position.
        ranks = margin.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        best = ranks < view.schedule_k[:, None]
        return view.candidates & (best | (margin >= self.gap))


@frozen(kw_only=True)
class AllInPolicy:
    """Commit the schedule's k most confident positions of the block; once every masked position of the
    answer that this step predicted, in any block, has probability >= ``tau``, commit them all at once.

    A policy that reaches past its block (``reach = "canvas"``), after Prophet's all-in fill (Li et al.
    2025, arXiv 2508.19982), which watches the logit gap of an answer region instead.
    """

    tau: float = field(default=0.95, validator=_fraction)
    reach = "canvas"  # may commit any masked answer position, not only the block's

    def select(self, view: StepView) -> torch.Tensor:
        block = unmask.registry().create("policies", "topk").select(view).mask
        remaining = view.masked & view.row_active[:, None] & view.in_answer
        # Positions this step did not predict (outside a cache's fed span) have -inf: not sure.
        sure = ((view.confidence >= self.tau) | ~remaining).all(dim=1)
        return block | (remaining & sure[:, None])


@frozen(kw_only=True)
class ConfidentFinishStop:
    """Finish a row once every still-masked position it predicted this step has probability >= ``tau``:
    the engine fills the rest of the answer from the current prediction.

    An early-commit stop after Prophet (Li et al. 2025, arXiv 2508.19982).
    """

    tau: float = field(default=0.95, validator=_fraction)

    def check(self, view: StepView) -> StopDecision:
        # after this step's commits, in each row's answer
        remaining = (view.x == view.mask_token_id) & view.in_answer
        # Positions not predicted this step (outside a cache's fed span) have -inf: not yet sure.
        sure = (view.confidence >= self.tau) | ~remaining
        return StopDecision(done=sure.all(dim=1))


@unmask.hookimpl
def unmask_register_policies(registry):
    registry.add("margin", MarginPolicy)
    registry.add("all_in", AllInPolicy)


@unmask.hookimpl
def unmask_register_stops(registry):
    registry.add("confident_finish", ConfidentFinishStop)
