"""LLaDA 2.1's token editing (shared/METHODS.md J): threshold decoding without edits, and every edit's rule."""

import pytest
import torch

import unmask
from unmask.contrib.models.tiny import tiny_denoiser
from unmask.testing import FakeDenoiser

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13], [14, 15, 16, 17, 18, 19, 20]]
MODELS = {"bidirectional": FakeDenoiser(), "block-causal": tiny_denoiser("llama", block_size=8)}


@pytest.mark.parametrize("name", MODELS)
def test_without_edits_it_is_threshold_decoding(name):
    model = MODELS[name]
    edit = unmask.decode(model, PROMPTS, gen_length=16, block_length=8,
                         policy="edit:tau=0.3,tau_edit=1,max_post_steps=0")
    threshold = unmask.decode(model, PROMPTS, gen_length=16, block_length=8, policy="threshold:tau=0.3")
    assert torch.equal(edit.tokens, threshold.tokens) and torch.equal(edit.nfe, threshold.nfe)


@pytest.mark.parametrize("name", MODELS)
def test_every_edit_changes_a_visible_answer_token_to_a_sure_prediction(name):
    model, tau_edit, post = MODELS[name], 0.0, 3  # (the speed mode: any prediction that differs)
    views = []
    result = unmask.decode(model, PROMPTS, gen_length=16, block_length=8, cache="none",
                           policy=f"edit:tau=0.3,tau_edit={tau_edit},max_post_steps={post}", on_step=views.append)
    edits = 0
    for before, view in zip(views, views[1:]):  # ``before``: the canvas this step started from
        if view.edited is None:
            continue
        rows, columns = view.edited.nonzero(as_tuple=True)
        edits += len(rows)
        assert (before.x[rows, columns] != model.mask_token_id).all()  # visible when the step began
        assert (view.x[rows, columns] != before.x[rows, columns]).all()  # a different token
        probability = view.logits.double().softmax(-1)[rows, columns - view.block_start]
        assert (probability.max(-1).values > tau_edit).all()
        assert (probability.argmax(-1) == view.x[rows, columns]).all()
    assert edits > 0
    prompt = torch.arange(views[0].x.shape[1])[None, :] < views[0].answer_starts[:, None]
    assert all(torch.equal(v.x[prompt], views[0].x[prompt]) for v in views)
    # After a block's last mask, at most max_post_steps edit-only steps per row and block.
    edit_only = {}
    for view in views:
        rows = view.row_active & ~(view.masked & view.window).any(1)
        for row in rows.nonzero().flatten().tolist():
            edit_only[row, view.block_index] = edit_only.get((row, view.block_index), 0) + 1
    assert edit_only and max(edit_only.values()) <= post
    assert (result.nfe <= 16 + 8 + (16 // 8 + 1) * post).all()
    assert not (result.tokens == model.mask_token_id).any()


def test_edits_never_reach_the_columns_hidden_from_a_row():
    """EoTP cut a row after a committed token: the EOS after it is hidden from the row (``view.row_end``), and
    even the speed mode (any differing prediction) does not edit it."""
    from unmask.core.types import StepView
    from unmask.strategies.edit import EditPolicy

    mask, eos, width = 9, 8, 6
    x = torch.tensor([[1, 2, 3, 4, eos, eos]])  # answer from column 1; cut after the token at column 3
    logits = torch.full((1, width, 10), -10.0)
    logits[..., 5] = 10.0  # every column sure of token 5
    view = StepView(x=x, x0=x.clone(), confidence=torch.full(x.shape, float("-inf"), dtype=torch.float64),
                    masked=x == mask, window=torch.ones_like(x, dtype=torch.bool), row_active=torch.tensor([True]),
                    schedule_k=torch.tensor([1]), nfe=torch.tensor([1]), logits=logits, answer_start=torch.tensor([1]),
                    row_end=torch.tensor([4]), block_start=0, block_end=width, mask_token_id=mask, eos_token_id=eos)
    edit = EditPolicy(tau=0.3, tau_edit=0.0, max_post_steps=3).select(view).edit
    assert edit is not None and edit[0].tolist() == [False, True, True, True, False, False]
