"""Stop criteria: when a row is finished and where its answer ends."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.plugins import create
from unmask.core.types import DecodeConfig, StepView, StopDecision
from unmask.core.validators import integer, one_of


@frozen(kw_only=True)
class NoStop(Component):
    """Never finish a row early and never cut: every row decodes its whole canvas (the default stop).

    Source: unmask (LLaDA's and Fast-dLLM's loops decode the full canvas, padding included).
    """

    def check(self, view: StepView) -> StopDecision:
        return StopDecision(done=torch.zeros_like(view.row_active))


@frozen(kw_only=True)
class EoTPStop(Component):
    """End-of-text prediction: cut the answer at the first EOS committed this step, else at the most
    confident masked position predicting EOS; everything after becomes EOS and leaves the canvas.

    Learn2PD's EoTP (arXiv 2509.25188). Never cuts before a committed non-EOS token. ``scope`` is where
    predicted EOS are searched: every position predicted this step, or the current block only.
    """

    # String parameters a request to `unmask serve` may set: data, never a path (docs/serve.md).
    request_strings: ClassVar[dict[str, str]] = {"scope": "text"}

    scope: str = field(default="predicted", validator=one_of("predicted", "block"))

    def check(self, view: StepView) -> StopDecision:
        eos, columns = view.eos_token_id, torch.arange(view.x.shape[1], device=view.x.device)
        generated = view.in_answer
        content = generated & (view.x != view.mask_token_id) & (view.x != eos)
        last_content = torch.where(content, columns, -1).max(1).values  # (B,)
        allowed = generated & (columns[None, :] > last_content[:, None]) & view.row_active[:, None]

        committed_eos = allowed & view.committed & (view.x == eos)
        first_committed = committed_eos.long().argmax(1)

        predicted_eos = allowed & (view.x == view.mask_token_id) & (view.x0 == eos)
        predicted_eos &= torch.isfinite(view.confidence)
        if self.scope == "block":
            predicted_eos &= view.window
        best_predicted = view.confidence.masked_fill(~predicted_eos, float("-inf")).argmax(1)

        none = torch.full_like(first_committed, -1)
        end = torch.where(
            committed_eos.any(1), first_committed, torch.where(predicted_eos.any(1), best_predicted, none)
        )
        return StopDecision(done=torch.zeros_like(view.row_active), end=end)


@frozen(kw_only=True)
class MaxNFEStop(Component):
    """Finish a row after ``n`` forwards; its remaining masks take their latest predictions (a budget cap).

    Source: unmask (an NFE budget, as used to compare decoders at equal compute).
    """

    n: int = field(validator=integer(minimum=1))

    def check(self, view: StepView) -> StopDecision:
        return StopDecision(done=view.nfe >= self.n)


def _stops(specs: Any) -> tuple[Any, ...]:
    if isinstance(specs, (str, tuple)) or not hasattr(specs, "__iter__"):
        specs = [specs]
    return tuple(create("stops", spec) for spec in specs)


@frozen(kw_only=True)
class AnyStop(Component):
    """A row is done when any member says so; the earliest end wins (``a + b`` in a spec).

    Source: unmask (the combinator of stop criteria).
    """

    stops: tuple[Any, ...] = field(converter=_stops)

    @property
    def reads_clock(self) -> bool:  # type: ignore[override]
        """Whether any member reads the decode's clock."""
        return any(stop.reads_clock for stop in self.stops)

    def check_config(self, config: DecodeConfig) -> None:
        from unmask.core.engine import check_config

        check_config(self.stops, config)

    def check(self, view: StepView) -> StopDecision:
        done = torch.zeros_like(view.row_active)
        end = torch.full_like(view.nfe, -1)
        for criterion in self.stops:
            decision = criterion.check(view)
            done = done | decision.done
            if decision.end is not None:
                take = (decision.end >= 0) & ((end < 0) | (decision.end < end))
                end = torch.where(take, decision.end, end)
        return StopDecision(done=done, end=end)
