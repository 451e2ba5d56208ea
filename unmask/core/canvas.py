"""The commit stage: the canvas a decode changes, and the rules every decision is held to before it is written.

A decision (``Commit``) fills masked positions within the policy's reach, and may return committed positions
of the current block to the mask (``remask``) or replace committed tokens (``edit``). The rules hold for any
policy: no write outside the reach, no mask token written, no id outside the vocabulary, an active row fills
at least one position (the progress floor), and a position returns to the mask at most
``REMASKS_PER_POSITION`` times, so every decode ends (docs/architecture.md states the bound).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from unmask.core.layout import Layout, widened
from unmask.core.types import Commit, StepView

__all__ = ["Canvas", "checked_commit", "reach", "REMASKS_PER_POSITION"]

# How often one position may return to the mask in a decode. An active row fills at least one position per
# step and re-masks only within the current block, so a block of W positions ends within
# W * (1 + REMASKS_PER_POSITION) steps (tests/test_engine.py checks the bound with hypothesis).
REMASKS_PER_POSITION = 4


@attrs.define
class Canvas:
    """The decode's changing state: the canvas, where each row's canvas ends, when each position was committed."""

    x: torch.Tensor  # (B, L): prompts, then the answer canvas
    row_end: torch.Tensor  # (B,) exclusive; EoTP moves it left, and later columns are hidden from the row
    answer: torch.Tensor  # (B, L) bool: each row's answer columns
    commit_step: torch.Tensor  # (B, L): the global step that wrote each column, -1 where none did
    mask_id: int
    eos_id: int
    # (B, L) long: how often each position returned to the mask
    remasks: torch.Tensor = attrs.field(default=attrs.Factory(lambda self: torch.zeros_like(self.x), takes_self=True))
    # (B, L) float64: the confidence of the step that wrote each position (+inf where no decision wrote one)
    confidence: torch.Tensor = attrs.field(default=attrs.Factory(
        lambda self: torch.full(self.x.shape, float("inf"), dtype=torch.float64, device=self.x.device),
        takes_self=True))

    @classmethod
    def of(cls, layout: Layout, mask_id: int, eos_id: int) -> Canvas:
        """The canvas before the first step."""
        batch, width = layout.x.shape
        columns = torch.arange(width, device=layout.x.device)
        return cls(x=layout.x, row_end=layout.row_end, answer=columns[None, :] >= layout.answer_start[:, None],
                   commit_step=torch.full((batch, width), -1, dtype=torch.long, device=layout.x.device),
                   mask_id=mask_id, eos_id=eos_id)

    def joined(self, layout: Layout, shift: int) -> Canvas:
        """The canvas of ``layout`` (``unmask.core.layout.joined``): these rows moved ``shift`` columns right
        and widened, as they stand, then the rows that joined."""
        width, added = layout.x.shape[1], len(layout.x) - len(self.x)

        def grown(tensor: torch.Tensor, fill: float) -> torch.Tensor:
            old = widened(tensor, shift, width - shift - tensor.shape[1], fill)
            return torch.cat([old, old.new_full((added, width), fill)])

        columns = torch.arange(width, device=self.x.device)
        return Canvas(x=layout.x, row_end=torch.cat([self.row_end + shift, layout.row_end[len(self.x):]]),
                      answer=columns[None, :] >= layout.answer_start[:, None], commit_step=grown(self.commit_step, -1),
                      mask_id=self.mask_id, eos_id=self.eos_id, remasks=grown(self.remasks, 0),
                      confidence=grown(self.confidence, float("inf")))

    @property
    def visible_answer(self) -> torch.Tensor:
        """(B, L) bool: each row's answer columns before its end (the later ones are hidden from it)."""
        columns = torch.arange(self.x.shape[1], device=self.x.device)[None, :]
        return self.answer & (columns < self.row_end[:, None])

    def window(self, block: tuple[int, int]) -> torch.Tensor:
        """(B, L) bool: the block's columns."""
        columns = torch.arange(self.x.shape[1], device=self.x.device)
        return ((columns >= block[0]) & (columns < block[1]))[None, :].expand(self.x.shape[0], -1)

    def apply(self, decision: Commit, step: int, confidence: torch.Tensor) -> None:
        """Write a checked decision: fills and edits take their tokens (and the step's ``confidence`` there),
        re-masked positions the mask again."""
        written = decision.mask if decision.edit is None else decision.mask | decision.edit
        self.x = torch.where(written, decision.tokens, self.x)
        self.commit_step = self.commit_step.masked_fill(written, step)
        self.confidence = torch.where(written, confidence, self.confidence)
        if decision.remask is not None:
            self.x = self.x.masked_fill(decision.remask, self.mask_id)
            self.commit_step = self.commit_step.masked_fill(decision.remask, -1)
            self.remasks += decision.remask.long()
            self.confidence = self.confidence.masked_fill(decision.remask, float("inf"))

    def cut(self, end: torch.Tensor, step: int) -> None:
        """Fill each row with EOS from ``end`` (B,; -1: no cut) on and hide the columns after it."""
        columns = torch.arange(self.x.shape[1], device=self.x.device)[None, :]
        cut = (end[:, None] >= 0) & (columns > end[:, None]) & (columns < self.row_end[:, None])
        if ((self.x != self.mask_id) & (self.x != self.eos_id) & cut).any():
            raise ValueError("a stop criterion cut the canvas before an already committed token")
        # The end position itself holds EOS too (EoTP predicted it there).
        at_end = self.answer & (columns == end[:, None]) & (self.x == self.mask_id)
        self.x = self.x.masked_fill(cut | at_end, self.eos_id)
        self.commit_step = self.commit_step.masked_fill(cut, -1).masked_fill(at_end, step)
        self.row_end = torch.where(end >= 0, torch.minimum(self.row_end, end + 1), self.row_end)

    def finalise(self, x0: torch.Tensor, rows: torch.Tensor, step: int) -> None:
        """Rows a stop criterion finished keep their latest predictions where masks remain (EOS if none)."""
        remaining = (self.x == self.mask_id) & rows[:, None] & self.answer
        fill = torch.where(x0 == self.mask_id, torch.full_like(x0, self.eos_id), x0)
        self.commit_step = self.commit_step.masked_fill(remaining, step)
        self.x = torch.where(remaining, fill, self.x)


def reach(view: StepView, reach_canvas: bool) -> torch.Tensor:
    """(B, L) bool: the positions a policy may commit: the candidates (masked, in the block, row active), or
    for a policy that declares reach = "canvas" any masked answer position of an active row."""
    if not reach_canvas:
        return view.candidates
    return view.masked & view.row_active[:, None] & view.in_answer


def checked_commit(decision: Any, view: StepView, progress_floor: bool, vocab_size: int, reach_canvas: bool,
                    canvas: Canvas) -> Commit:
    """The policy's decision held to the rules: fills only where it may reach (masked positions of the block,
    or of the answer for reach "canvas"), re-masks and edits only committed positions there, writes no mask
    token and no id outside the vocabulary; an active row that fills nothing fills its most confident
    position (the progress floor); re-masks of a position that used up its ``REMASKS_PER_POSITION`` are
    dropped, which keeps the loop bounded."""
    if not isinstance(decision, Commit):
        raise TypeError(f"a policy's select must return a Commit (or be adapted by unmask.create), got "
                        f"{type(decision).__name__}")
    shape = tuple(view.x.shape)
    commit, tokens = decision.mask, decision.tokens
    _check_mask(commit, shape, "a policy must return a bool tensor")
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tuple(tokens.shape) != shape:
        got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"Commit.tokens must be a long tensor of shape {shape}, got {got}")
    written = commit
    if decision.edit is not None:
        _check_mask(decision.edit, shape, "Commit.edit must be None or a bool tensor")
        written = commit | decision.edit
    chosen = tokens[written]
    if ((chosen < 0) | (chosen >= vocab_size)).any():
        raise ValueError(f"Commit.tokens holds ids outside the vocabulary [0, {vocab_size})")
    if (commit & ~reach(view, reach_canvas)).any():
        where = "masked answer positions" if reach_canvas else "masked positions of the current block"
        raise ValueError(f"the policy committed positions that are not {where}")
    if (written & (tokens == view.mask_token_id)).any():
        raise ValueError("the policy committed the mask token, which would leave the position masked; "
                         "return positions to the mask with Commit.remask")
    remask = _checked_revisions(decision, view, reach_canvas, canvas) if (
        decision.remask is not None or decision.edit is not None) else None
    # (a row whose block has no mask left is in its edit-only steps: it fills nothing)
    stalled = view.row_active & view.candidates.any(1) & ~commit.any(1)
    if stalled.any():
        if not progress_floor:
            raise RuntimeError(f"the policy committed nothing for active rows {stalled.nonzero().flatten().tolist()}")
        # Among the candidates even where every confidence is -inf, so the floor never picks another column.
        best = torch.where(view.candidates, view.candidate_confidence.clamp(min=-1.0), float("-inf")).argmax(1)
        floor = torch.zeros_like(commit)
        floor[stalled, best[stalled]] = True
        commit, tokens = commit | floor, torch.where(floor, view.x0, tokens)
    edit = decision.edit if decision.edit is not None and decision.edit.any() else None
    return attrs.evolve(decision, mask=commit, tokens=tokens, remask=remask, edit=edit)


def _checked_revisions(decision: Commit, view: StepView, reach_canvas: bool, canvas: Canvas) -> torch.Tensor | None:
    """A decision's re-masks and edits held to their rules (only for a decision that has any: the check costs a
    step's worth of masks); the re-masks the engine applies, those past a position's budget dropped."""
    shape = tuple(view.x.shape)
    edit = decision.edit if decision.edit is not None else torch.zeros_like(decision.mask)
    if (edit & ~_committed(view, reach_canvas, canvas)).any():
        raise ValueError("Commit.edit may name only committed answer positions of active rows within the "
                         f"policy's reach ({'the answer' if reach_canvas else 'the current block'})")
    if decision.remask is None:
        return None
    _check_mask(decision.remask, shape, "Commit.remask must be None or a bool tensor")
    if (decision.remask & ~_committed(view, False, canvas)).any():  # a later block would leave it masked
        raise ValueError("Commit.remask may name only committed positions of the current block of active rows")
    if (decision.remask & edit).any():
        raise ValueError("Commit.remask and Commit.edit name the same position: re-mask it or edit it")
    remask = decision.remask & (canvas.remasks < REMASKS_PER_POSITION)
    return remask if remask.any() else None


def _check_mask(mask: Any, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{what} of shape {shape}, got {got}")


def _committed(view: StepView, reach_canvas: bool, canvas: Canvas) -> torch.Tensor:
    """(B, L) bool: committed answer positions of active rows, before each row's end, within the block (the
    answer for reach "canvas")."""
    area = canvas.visible_answer if reach_canvas else view.window & canvas.visible_answer
    return area & ~view.masked & view.row_active[:, None]
