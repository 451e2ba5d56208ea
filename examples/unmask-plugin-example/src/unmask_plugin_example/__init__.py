"""An unmask plug-in from outside the project: one unmask policy and one stop criterion.

Installed with ``pip install -e examples/unmask-plugin-example``, its entry point (group ``unmask``)
registers ``margin`` and ``prophet``; ``unmask list`` shows them with this package as provider.
"""

from __future__ import annotations

import torch
from attrs import field, frozen

import unmask
from unmask import StepView, StopDecision

__all__ = ["MarginPolicy", "ProphetStop"]


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
class ProphetStop:
    """Finish a row early once every still-masked position it predicted this step has probability
    >= ``tau``: the rest of the answer is committed at once from the current prediction.

    Prophet's early-commit decoding (Li et al. 2025, arXiv 2508.19982): answers often converge long
    before the last step.
    """

    tau: float = field(default=0.95, validator=_fraction)

    def check(self, view: StepView) -> StopDecision:
        masked = view.x == view.mask_token_id  # after this step's commits
        gen = torch.zeros_like(masked)
        gen[:, view.gen_start:] = True
        remaining = masked & gen
        # Positions not predicted this step (outside a cache's fed span) have -inf: not yet sure.
        sure = (view.confidence >= self.tau) | ~remaining
        return StopDecision(done=sure.all(dim=1))


@unmask.hookimpl
def unmask_register_policies(registry):
    registry.add("margin", MarginPolicy)


@unmask.hookimpl
def unmask_register_stops(registry):
    registry.add("prophet", ProphetStop)
