"""ReMDM's LLaDA sampler (shared/METHODS.md I): invariants of its loop, on the bundled model and a block model."""

import pytest
import torch

import unmask
from unmask.contrib.models.tiny import tiny_denoiser
from unmask.testing import FakeDenoiser

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]


@pytest.mark.parametrize("model", [FakeDenoiser(), tiny_denoiser("llama", block_size=8)], ids=["bidirectional",
                                                                                           "block-causal"])
def test_no_remasking_is_one_token_per_step(model):
    """number=0: the tokens and forwards of topk:k=1 (the reference's loop would spend forwards re-masking
    nothing; here the loop has nothing to do)."""
    remdm = unmask.decode(model, PROMPTS, gen_length=16, block_length=8, policy="remdm:number=0")
    topk = unmask.decode(model, PROMPTS, gen_length=16, block_length=8, policy="topk:k=1")
    assert torch.equal(remdm.tokens, topk.tokens) and torch.equal(remdm.nfe, topk.nfe)


@pytest.mark.parametrize("number", [1, 2])
def test_the_loop_keeps_the_mask_count_and_returns_the_least_confident_commits(number):
    model = FakeDenoiser()
    views = []
    result = unmask.decode(model, PROMPTS, gen_length=16, block_length=16, policy=f"remdm:number={number}",
                           on_step=views.append)
    plain = unmask.decode(model, PROMPTS, gen_length=16, block_length=16, policy="topk:k=1")
    assert (result.nfe > plain.nfe).all()  # the loop's forwards
    assert not (result.tokens == model.mask_token_id).any()
    looped = 0
    for before, view in zip(views, views[1:]):  # ``before``: the canvas this step started from
        if view.remasked is None:
            continue
        mask = model.mask_token_id
        # A loop step fills `number` and returns `number`: the mask count holds.
        loop = (view.remasked.sum(1) == number) & (view.committed.sum(1) == number)
        looped += int(loop.sum())
        assert torch.equal((view.x == mask).sum(1)[loop], (before.x == mask).sum(1)[loop])
        # The returned positions are the block's commits of least confidence at their commit.
        kept = (before.x != mask) & view.window & view.in_answer & ~view.remasked
        for row in view.remasked.any(1).nonzero().flatten().tolist():
            returned = before.commit_confidence[row][view.remasked[row]]
            assert returned.max() <= before.commit_confidence[row][kept[row]].min()
    assert looped > 0
    prompt_columns = torch.arange(views[-1].x.shape[1])[None, :] < views[-1].answer_starts[:, None]
    assert all(torch.equal(v.x[prompt_columns], views[0].x[prompt_columns]) for v in views)
