"""WINO (shared/METHODS.md H): its leave-one-out forward, its two degenerate cases and its per-step limits."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unmask
from unmask.core.component import Component
from unmask.core.types import Commit
from unmask.strategies._select import top_k_mask
from unmask.testing import FakeDenoiser

PROMPTS = [[0, 1, 2], [3, 4, 9], [5, 6, 7]]


def _llama():
    from unmask.contrib.models.tiny import tiny_denoiser

    return tiny_denoiser("llama", seed=1)


class CappedThreshold(Component):
    """WINO's draft alone: above the threshold, at most min(max(floor(0.7 M), 5), 20), at least one."""

    def __init__(self, threshold):
        self.threshold = threshold

    def select(self, view):
        confidence = view.confidence.masked_fill(~(view.masked & view.window), float("-inf"))
        cap = torch.clamp((view.masked & view.window).sum(1) * 7 // 10, min=5, max=20)
        count = torch.clamp(torch.minimum((confidence > self.threshold).sum(1), cap), min=1) * view.row_active
        return Commit(mask=top_k_mask(confidence, count, block=view.block), tokens=view.x0)


@pytest.mark.parametrize("model", [FakeDenoiser(seed=3), _llama()], ids=["fake", "llama"])
def test_threshold_one_is_one_token_per_step(model):
    wino = unmask.decode(model, PROMPTS, gen_length=16, block_length=8, policy="wino:threshold=1.0")
    topk = unmask.decode(model, PROMPTS, gen_length=16, block_length=8, policy="topk:k=1")
    assert torch.equal(wino.tokens, topk.tokens) and torch.equal(wino.nfe, topk.nfe)


@pytest.mark.parametrize("model", [FakeDenoiser(seed=3), _llama()], ids=["fake", "llama"])
@pytest.mark.parametrize("threshold", [0.05, 0.3])
def test_no_verification_is_capped_threshold_decoding(model, threshold):
    wino = unmask.decode(model, PROMPTS, gen_length=16, block_length=8,
                         policy=f"wino:threshold={threshold},threshold_back=0")
    capped = unmask.decode(model, PROMPTS, gen_length=16, block_length=8, policy=CappedThreshold(threshold))
    assert torch.equal(wino.tokens, capped.tokens) and torch.equal(wino.nfe, capped.nfe)


class WriteFirst(Component):
    """Step 0 writes ``token`` at the block's first column; later steps the most confident mask. Keeps views."""

    leave_one_out = True

    def __init__(self, token):
        self.token, self.views = token, []

    def select(self, view):
        self.views.append(view)
        if view.step == 0:
            mask = torch.zeros_like(view.masked)
            mask[:, view.block_start] = True
            return Commit(mask=mask, tokens=torch.full_like(view.x, self.token))
        return Commit.of(top_k_mask(view.confidence, torch.ones(len(view.x), dtype=torch.long), block=view.block),
                         view)


@pytest.mark.parametrize("model", [FakeDenoiser(seed=3), _llama()], ids=["fake", "llama"])
def test_the_copy_never_sees_its_twin_and_the_canvas_never_sees_the_copy(model):
    """The canvas's logits are a plain forward's. Copy j attends to everything but its twin: on the fake (one
    attention layer) its logits do not depend on the twin's token at all; in a deeper model the other
    positions' states still carry it, as in the reference."""
    first, second = WriteFirst(5), WriteFirst(6)
    for policy in (first, second):
        unmask.decode(model, PROMPTS, gen_length=8, block_length=8, policy=policy)
    a, b = first.views[1], second.views[1]  # the canvases differ only at the block's first column
    positions = torch.arange(a.x.shape[1])[None].expand_as(a.x)  # (the prompts are equally long: no padding)
    with torch.no_grad():
        plain = model(a.x, attention_mask=torch.ones_like(a.x), position_ids=positions)
    assert torch.allclose(a.span_logits.float(), plain.float(), atol=1e-5)
    if isinstance(model, FakeDenoiser):
        assert torch.allclose(a.leave_one_out[:, 0], b.leave_one_out[:, 0])
    assert not torch.allclose(a.leave_one_out[:, 1:].float(), b.leave_one_out[:, 1:].float(), atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(threshold=st.floats(0.0, 1.0), back=st.floats(0.0, 1.0), seed=st.integers(0, 5), block=st.sampled_from([4, 8]))
def test_forwards_per_block_stay_within_its_length_and_each_step_keeps_the_limits(threshold, back, seed, block):
    model = FakeDenoiser(seed=seed)
    views = []
    result = unmask.decode(model, PROMPTS, gen_length=16, block_length=block,
                           policy=f"wino:threshold={threshold},threshold_back={back}", on_step=views.append)
    assert (result.nfe <= 16).all() and not (result.tokens == model.mask_token_id).any()
    drafted_before = torch.full((len(PROMPTS),), 30)
    for view in views:
        if view.step == 0:
            drafted_before = torch.full((len(PROMPTS),), 30)
        remasked = torch.zeros_like(view.committed) if view.remasked is None else view.remasked
        assert not (remasked & view.committed).any()
        assert (remasked & ~view.window).sum() == 0
        assert (remasked.sum(1) <= (drafted_before - 1).clamp(min=0)).all()
        drafted_before = view.committed.sum(1)


def test_a_cache_or_a_block_causal_model_is_refused_with_the_reason():
    from unmask.contrib.models.tiny import tiny_denoiser

    with pytest.raises(ValueError, match="cache='none'"):
        unmask.decode(_llama(), PROMPTS, gen_length=8, block_length=8, policy="wino", cache="dual")
    with pytest.raises(ValueError, match="accepts_pair_mask"):
        unmask.decode(tiny_denoiser("llama", block_size=8), PROMPTS, gen_length=8, block_length=8, policy="wino")


@pytest.mark.parametrize("settings", [dict(stop="eotp"), dict(constraint="regex:pattern='[a-z ]+'")])
def test_a_canvas_cut_inside_the_block_keeps_the_copy_to_what_the_forward_sees(settings):
    """EoTP or a closed constrained answer hides the block's last columns: the copy covers the rest only."""
    from unmask.contrib.models.reference import load_reference_model
    from unmask.contrib.tasks import samples

    model, tokenizer = load_reference_model()
    prompts = [tokenizer.encode(s.prompt) for task in ("sort", "copy") for s in samples(task, 3, 0)]
    result = unmask.decode(model, prompts, gen_length=32, block_length=16, policy="wino", tokenizer=tokenizer,
                           **settings)
    assert not (result.tokens == model.mask_token_id).any() and (result.nfe <= 32).all()
