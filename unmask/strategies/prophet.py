from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import StepView, StopDecision
from unmask.core.validators import integer


def _gap_threshold(instance: Any, attribute: Any, value: Any) -> None:
    """A logit gap: a number >= 0; infinity disables that phase."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a number >= 0 (inf disables it), got {value!r}")


@frozen(kw_only=True)
class ProphetStop(Component):
    """Finish a row once the model is sure of its answer region: when the mean gap between the top-1 and
    top-2 *logits* over the first ``answer`` positions of the answer (committed or not) reaches the
    threshold of the decode's progress (``early`` before a third of the step budget, ``mid`` before two
    thirds, ``late`` after), every remaining mask of the row takes this step's prediction at once and the
    row is done.

    Prophet (Li et al. 2025, "Diffusion Language Models Know the Answer Before Decoding", arXiv
    2508.19982; pixeli99/Prophet): thresholds 7.5 / 5.0 / 2.5 at progress < 0.33 / < 0.67 / later, five
    answer positions. Here per row (the authors' code reads row 0 of a batch of one), and the answer
    region is the answer's start (the authors pre-fill an "The answer is" anchor and watch the positions
    after it). The gap needs this step's logits of the answer region and the fill its predictions at every
    remaining mask: every step has them without a cache; under a cache only the steps that feed those
    columns do (a block's first step; with the prefix cache also the first block's later steps), and the
    row waits for one. Infinite thresholds never fire (then it is ``none``).
    """

    reads_clock: ClassVar[bool] = True  # its thresholds follow the decode's progress
    early: float = field(default=7.5, validator=_gap_threshold)
    mid: float = field(default=5.0, validator=_gap_threshold)
    late: float = field(default=2.5, validator=_gap_threshold)
    answer: int = field(default=5, validator=integer(minimum=1))

    def threshold(self, progress: float) -> float:
        return self.early if progress < 0.33 else self.mid if progress < 0.67 else self.late

    def gap(self, view: StepView) -> torch.Tensor | None:
        """(B,) mean top-1 minus top-2 logit over the answer region, or None where it was not fed."""
        starts = view.answer_starts
        length = min(self.answer, view.x.shape[1] - int(starts.max()))
        region = view.logits_at(view.gen_start, int(starts.max()) + length)
        if region is None:
            return None
        if (starts != view.gen_start).any():  # each row's own answer columns
            offsets = (starts - view.gen_start)[:, None] + torch.arange(length, device=starts.device)[None, :]
            region = region.gather(1, offsets[..., None].expand(-1, -1, region.shape[-1]))
        top2 = region.float().topk(2, dim=-1).values
        return (top2[..., 0] - top2[..., 1]).double().mean(1)

    def check(self, view: StepView) -> StopDecision:
        remaining = (view.x == view.mask_token_id) & view.in_answer
        finished = ~remaining.any(1)  # nothing left to fill: done, and stays done
        gap = self.gap(view)
        if gap is None:
            return StopDecision(done=finished)
        progress = (view.global_step + 1) / max(view.total_steps, 1)  # the authors count steps from 1
        fires = gap >= self.threshold(progress)
        # Every remaining mask needs a prediction from this step's forward.
        columns = torch.arange(view.x.shape[1], device=view.x.device)
        fed = (columns >= view.span_start) & (columns < view.span_start + view.span_logits.shape[1])
        covered = ~(remaining & ~fed[None, :]).any(1)
        return StopDecision(done=finished | (fires & covered))
