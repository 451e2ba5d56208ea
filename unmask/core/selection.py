"""The selection stage: the policy decides a step's commit, held to the engine's rules (``unmask.core.canvas``).
A constraint wraps it (:class:`ConstrainedSelection`): it bans the tokens it does not allow before the
predictions are scored, asks the policy again while it refuses a commit, and ends an answer it has closed."""

from __future__ import annotations

from typing import Any, Callable

import attrs
import torch

from unmask.core.canvas import Canvas, checked_commit, reach
from unmask.core.constraints import choose, forced_ends, restrict, vocabulary_of
from unmask.core.forwards import Forward
from unmask.core.scoring import predict
from unmask.core.types import Commit, DecodeConfig, StepView

__all__ = ["Selection", "ConstrainedSelection", "selection"]


@attrs.define
class Selection:
    policy: Any  # an UnmaskPolicy with the abilities of Component
    config: DecodeConfig
    generator: torch.Generator

    @property
    def reach_canvas(self) -> bool:
        return bool(self.policy.reach == "canvas")

    def restrict(self, forward: Forward, unscored: Callable[[Forward], StepView]) -> Forward:
        """The forward whose logits the predictions are scored from (a constraint bans tokens in them)."""
        return forward

    def choose(self, view: StepView, forward: Forward, canvas: Canvas) -> tuple[Commit, StepView, torch.Tensor]:
        """The checked decision, the view it was made on, and (B,) the rows whose canvas after the commit is
        what the policy decided (a candidate's logits can serve only those)."""
        decision = self._checked(view, forward, canvas)
        return decision, view, torch.ones_like(view.row_active)

    def end_answers(self, view: StepView, decision: Commit, canvas: Canvas, global_step: int) -> torch.Tensor:
        """After the commit: (B,) rows whose answer the selection ended (none without a constraint)."""
        return torch.zeros_like(view.row_active)

    def _checked(self, view: StepView, forward: Forward, canvas: Canvas) -> Commit:
        return checked_commit(self.policy.select(view), view, self.config.progress_floor, forward.logits.shape[-1],
                              self.reach_canvas, canvas)


@attrs.define
class ConstrainedSelection(Selection):
    constraint: Any = attrs.field(kw_only=True)  # a Constraint
    name: str = attrs.field(kw_only=True)

    def restrict(self, forward: Forward, unscored: Callable[[Forward], StepView]) -> Forward:
        logits = forward.logits.clone() if forward.reused.any() else forward.logits  # (reused logits stay as scored)
        forward = attrs.evolve(forward, logits=logits)
        view = unscored(forward)
        restrict(self.constraint, view, reach(view, self.reach_canvas), logits, forward.plan.start, self.name)
        return forward

    def choose(self, view: StepView, forward: Forward, canvas: Canvas) -> tuple[Commit, StepView, torch.Tensor]:
        logits, start = forward.logits, forward.plan.start
        chosen: list[Commit] = []

        def select(view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
            chosen[:] = [self._checked(view, forward, canvas)]
            return chosen[0].mask, chosen[0].tokens

        def score_at(rows: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """x0 and its probability at these canvas positions (masked, in the fed span)."""
            x0, confidence = predict(logits[rows, columns - start][None], self.config.temperature, self.generator,
                                     view.mask_token_id)
            return x0[0], confidence[0]

        commit, tokens, view = choose(self.constraint, view, select, logits, start, score_at, self.name,
                                      lambda view: reach(view, self.reach_canvas))
        policy = chosen[0]
        as_decided = (commit == policy.mask).all(1) & ((tokens == policy.tokens) | ~commit).all(1)
        return attrs.evolve(policy, mask=commit, tokens=tokens), view, as_decided  # (refusals left out)

    def end_answers(self, view: StepView, decision: Commit, canvas: Canvas, global_step: int) -> torch.Tensor:
        """An answer the constraint has ended at a committed EOS: the rest of the row is EOS, now."""
        ended = torch.zeros_like(view.row_active)
        if (decision.mask & (decision.tokens == view.eos_token_id)).any():
            ends = forced_ends(self.constraint, attrs.evolve(view, x=canvas.x, masked=canvas.x == view.mask_token_id))
            if (ends >= 0).any():
                canvas.cut(ends, global_step)
                ended = ends >= 0
        return ended


def selection(policy: Any, constraint: Any, *, name: str, config: DecodeConfig,
              generator: torch.Generator, tokenizer: Any, vocab_size: int, mask_id: int, eos_id: int,
              gen_start: int) -> Selection:
    """The policy's selection, wrapped by ``constraint`` where one is given (prepared for ``tokenizer``)."""
    if constraint is None:
        return Selection(policy, config, generator)
    if tokenizer is None:
        raise ValueError("constraint: pass tokenizer= too; a constraint reads the text of each token")
    constraint.prepare(vocabulary_of(tokenizer, vocab_size, eos_id, mask_id), gen_start)
    return ConstrainedSelection(policy, config, generator, constraint=constraint, name=name)
