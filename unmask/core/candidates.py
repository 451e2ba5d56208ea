"""Candidate canvases: a policy asks the engine to score K canvases of the step's rows (``view.evaluate``),
commits one of them whole, and the next step takes that candidate's logits instead of a new forward.

The candidates are scored as the next step would score them: through the plan the cache manager makes for the
next step, on a copy of its cache (the manager's ``repeated``) so the decode's own cache is left as it was, in
one batched forward of K x B rows. That forward counts once in each active row's NFE, as the forward it
replaces would; ``candidate_rows`` counts the K canvases each row sent through it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from attrs import define, field

from unmask.core.scoring import check_logits, on_canvas, predict
from unmask.core.types import Candidates, CanvasState, ForwardPlan

__all__ = ["CandidateScorer", "Reuse"]


@define
class Reuse:
    """Logits the next step may take instead of a forward: valid while the plan and the active rows' canvas
    are those the candidate was scored with."""

    logits: torch.Tensor  # (B, S, V)
    start: int
    end: int
    x: torch.Tensor  # (B, L) the canvas they belong to
    valid: torch.Tensor  # (B,) bool, rows that committed a scored candidate

    def rows(self, plan: ForwardPlan, x: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the rows whose logits these are for this plan and canvas."""
        if (plan.start, plan.end) != (self.start, self.end) or plan.fills_cache or x.shape != self.x.shape:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return (x == self.x).all(1) & self.valid

    def joined(self, shift: int, x: torch.Tensor, end: int) -> Reuse | None:
        """These logits for the canvas ``x`` that rows joined (``unmask.core.layout.joined``: the rows here moved
        ``shift`` columns right), for a plan of every column up to ``end``, the one a forward without a cache
        runs; None where they were for another plan (a cache's plan starts afresh after a join anyway)."""
        if self.start != 0:
            return None
        logits = self.logits.new_zeros((x.shape[0], end, self.logits.shape[-1]))
        logits[:len(self.logits), shift:shift + self.end] = self.logits
        valid = torch.cat([self.valid, self.valid.new_zeros(x.shape[0] - len(self.valid))])
        return Reuse(logits=logits, start=0, end=end, x=x, valid=valid)


@define
class CandidateScorer:
    """``view.evaluate(canvases)``: ``canvases`` is (K, B, L) long, each the step's canvas with some masked
    positions filled (prompt and committed tokens unchanged). Returns :class:`Candidates`."""

    model: Any
    cache_manager: Any
    next_state: Callable[[torch.Tensor], CanvasState]  # the next step's CanvasState for a canvas
    x: torch.Tensor  # (B, L) the canvas before this step's commits
    row_active: torch.Tensor
    nfe: torch.Tensor  # the decode's counters, advanced in place
    candidate_rows: torch.Tensor
    temperature: float
    generator: torch.Generator
    mask_id: int
    largest_id: int
    global_step: int
    scored: tuple[torch.Tensor, Candidates] | None = field(default=None, init=False)

    def __call__(self, canvases: torch.Tensor, rows: torch.Tensor | None = None) -> Candidates:
        """``rows`` (B,) bool: the rows that need the scores and count the forward (default: the active
        ones); the others are scored too, as a batch's other rows are, without counting."""
        self._check(canvases)
        counted = self.row_active if rows is None else rows & self.row_active
        if self.temperature > 0:
            raise ValueError("candidate canvases are scored greedily: decode at temperature 0")
        count, batch, width = canvases.shape
        state = self.next_state(canvases[0])
        plan = self.cache_manager.plan(state)
        if plan.run is not None:
            raise TypeError(f"{type(self.cache_manager).__name__} cannot score candidates: it runs its forwards a "
                            "layer at a time (ForwardPlan.run); use cache none, prefix or dual")
        cache = plan.past_key_values
        if cache is not None:
            cache = self.cache_manager.repeated(cache, count)
            if cache is None:
                raise TypeError(f"{type(self.cache_manager).__name__} cannot score candidates: its plans' cache "
                                "needs repeating (Component.repeated)")
        fed = canvases[:, :, plan.start:plan.end].reshape(count * batch, -1)
        logits = self.model(
            fed, position_ids=state.position_ids[:, plan.start:plan.end].repeat(count, 1),
            attention_mask=plan.attention_mask.repeat(count, 1), past_key_values=cache,
        )
        check_logits(logits, (count * batch, plan.end - plan.start), self.largest_id, self.global_step)
        self.nfe += counted.long()
        self.candidate_rows += count * counted.long()
        logits = logits.reshape(count, batch, *logits.shape[1:])
        x0, confidence = zip(*(
            on_canvas(canvas, canvas == self.mask_id, plan.start,
                      *predict(span, self.temperature, self.generator, self.mask_id))
            for canvas, span in zip(canvases, logits)
        ))
        scored = Candidates(x0=torch.stack(x0), confidence=torch.stack(confidence), span_logits=logits,
                            span_start=plan.start)
        self.scored = (canvases, scored)
        return scored

    def reuse(self, evaluated: Any, x: torch.Tensor, previous: Reuse | None) -> Reuse | None:
        """After the commit: the logits of the candidate each row committed (``Commit.evaluated``, -1 for
        none), for the next steps; rows that name none keep ``previous`` (a row that sat out a step still
        has the canvas it was scored with)."""
        if self.scored is None:
            return previous
        canvases, scored = self.scored
        if not isinstance(evaluated, torch.Tensor) or evaluated.shape != (x.shape[0],) or evaluated.is_floating_point() \
                or (evaluated >= len(canvases)).any():
            raise TypeError(f"Commit.evaluated must be a ({x.shape[0]},) integer tensor of candidate indices below "
                            f"{len(canvases)} (or -1)")
        valid = evaluated >= 0
        chosen, rows = evaluated.clamp(min=0), torch.arange(x.shape[0], device=x.device)
        wrong = valid & (canvases[chosen, rows] != x).any(1)
        if wrong.any():
            raise ValueError(f"Commit.evaluated names candidates that rows {wrong.nonzero().flatten().tolist()} "
                             "do not equal after the commit")
        logits = scored.span_logits[chosen, rows]
        start, end = scored.span_start, scored.span_start + logits.shape[1]
        if previous is not None and (previous.start, previous.end) == (start, end) and previous.x.shape == x.shape:
            keep = ~valid & previous.valid
            logits = torch.where(keep[:, None, None], previous.logits, logits)
            x, valid = torch.where(keep[:, None], previous.x, x), valid | keep
        return Reuse(logits=logits, start=start, end=end, x=x, valid=valid)

    def _check(self, canvases: Any) -> None:
        if not isinstance(canvases, torch.Tensor) or canvases.dim() != 3 or canvases.dtype != torch.long \
                or canvases.shape[1:] != self.x.shape or canvases.shape[0] < 1:
            got = f"{canvases.dtype} {tuple(canvases.shape)}" if isinstance(canvases, torch.Tensor) else type(canvases).__name__
            raise TypeError(f"evaluate takes a (K, {', '.join(map(str, self.x.shape))}) long tensor of candidate "
                            f"canvases, K >= 1; got {got}")
        fixed = self.x != self.mask_id
        if (canvases[:, fixed] != self.x[fixed]).any():
            raise ValueError("candidate canvases may only fill masked positions; they changed committed tokens")
