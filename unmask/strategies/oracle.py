from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, StepView
from unmask.core.validators import optional
from unmask.strategies._select import top_k_mask


def _token_matrix(instance: object, attribute: object, value: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.is_floating_point():
        raise ValueError(f"{attribute.name} must be a 2-D integer tensor (rows, gen_length) of reference tokens")


@frozen(kw_only=True)
class OraclePolicy(Component):
    """Commit exactly the masked positions of the block whose prediction equals the reference output.

    Learn2PD's "extremely greedy parallel" oracle (arXiv 2509.25188). A row with no match commits its most
    confident position with the reference token, so the output always equals the reference. The reference
    is the vanilla output (``topk``, one token per step) of the same prompts: give it as ``reference``, or
    leave it out and let the experiment runner (``unmask bench``, ``ablate``, ``collect``) decode it.
    """

    reference: torch.Tensor | None = field(default=None, validator=optional(_token_matrix), eq=False)  # (B, gen)

    def select(self, view: StepView) -> Commit:
        if self.reference is None:
            raise ValueError("the oracle needs reference=(rows, gen_length) tokens, the vanilla output of the same "
                             "prompts; unmask bench, ablate and collect decode it for you")
        batch, width = view.x.shape
        if self.reference.shape[0] != batch:
            raise ValueError(f"reference has {self.reference.shape[0]} rows but the decode has {batch}")
        # A block-causal model's canvas runs on to its block's end, past gen_length: there the oracle has no
        # reference and takes the prediction.
        target = torch.where(view.in_answer, view.x0, view.x)
        columns = view.answer_starts[:, None] + torch.arange(self.reference.shape[1], device=view.x.device)[None, :]
        on_canvas = columns < width
        rows = torch.arange(batch, device=view.x.device)[:, None].expand_as(columns)
        target[rows[on_canvas], columns[on_canvas]] = self.reference.to(view.x.device)[on_canvas]
        commit = view.candidates & (view.x0 == target)
        stalled = view.row_active & ~commit.any(1)
        fallback = top_k_mask(view.candidate_confidence, stalled.long(), block=view.block)
        return Commit(mask=commit | fallback, tokens=target)

    def requirements(self) -> set[str]:
        """The vanilla output of the same prompts, unless it was given (``unmask.core.needs``)."""
        return {"reference"} if self.reference is None else set()

    def provide(self, reference: torch.Tensor) -> OraclePolicy:
        return OraclePolicy(reference=reference)


def example_oracle(*, rows: list[int], gen_length: int, vocab_size: int, mask_token_id: int) -> OraclePolicy:
    """An oracle against random reference tokens (row r's from seed r, any batch), for contract checks."""
    references = []
    for row in rows:
        tokens = torch.randint(vocab_size - 1, (gen_length,), generator=torch.Generator().manual_seed(row))
        references.append(tokens + (tokens >= mask_token_id).long())  # every id but the mask's
    return OraclePolicy(reference=torch.stack(references))
