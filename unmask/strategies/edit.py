from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, StepView
from unmask.core.validators import integer, number


@frozen(kw_only=True)
class EditPolicy(Component):
    """LLaDA 2.1's JointThreshold: fill masks (M2T) and replace committed tokens (T2T) from the same forward.

    M2T fills every masked position of the block whose prediction has probability above ``tau`` (strictly;
    none above it: the most confident one). T2T replaces every token of the block's answer that was visible
    when the step began and whose prediction now differs with probability above ``tau_edit``. After the
    block's last mask, up to ``max_post_steps`` more steps edit only, and the first that edits nothing closes
    the block (``steps_after_fill``), so a block costs at most its masks plus ``max_post_steps`` forwards.
    With ``tau_edit >= 1`` and ``max_post_steps=0`` it is threshold decoding. Editing pays only on a model
    trained to correct visible tokens; other models' logits at visible positions were never trained.

    Source: unmask, after LLaDA 2.1's technical report (inclusionAI/LLaDA2.X, no arXiv id) and its
    ``generate`` (modeling_llada21_moe.py) and SGLang's JointThreshold; defaults of that ``generate`` (0.95,
    0.9, 16). The model card's modes: quality 0.7 / 0.5, speed 0.5 / 0.
    """

    tau: float = field(default=0.95, validator=number(minimum=0, maximum=1))
    tau_edit: float = field(default=0.9, validator=number(minimum=0))
    max_post_steps: int = field(default=16, validator=integer(minimum=0))

    @property
    def steps_after_fill(self) -> int:  # type: ignore[override]
        return self.max_post_steps

    def select(self, view: StepView) -> Commit:
        fill = view.candidates & (view.candidate_confidence > self.tau)  # none: the engine's floor, top-1
        if self.tau_edit >= 1 or view.logits is None:
            return Commit.of(fill, view)
        start, width = view.block_start, view.logits.shape[1]  # (a block cut short by EoTP: fewer columns)
        probability, predicted = view.logits.double().softmax(-1).max(-1)  # (B, W)
        block = torch.zeros_like(view.masked)
        block[:, start:start + width] = True
        # Not the padding after an answer's first EOS, nor columns hidden from the row (past EoTP's cut).
        eos = ((view.x == view.eos_token_id) & view.in_answer).long()
        ended = eos.cumsum(1) - eos > 0
        editable = block & view.in_answer & view.in_canvas & ~view.masked & view.row_active[:, None] & ~ended
        new, sure = view.x.clone(), torch.zeros_like(view.masked)
        new[:, start:start + width], sure[:, start:start + width] = predicted, probability > self.tau_edit
        edit = editable & sure & (new != view.x) & (new != view.mask_token_id)
        tokens = torch.where(edit, new, view.x0)
        return Commit(mask=fill, tokens=tokens, edit=edit if edit.any() else None)
