"""Prophet, LocalLeap, FreeDave and dParallel's entropy rule: the invariants of shared/METHODS.md, and the
engine hooks they use (logits at any column, candidate canvases, commits past the block)."""

import math

import attrs
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import unmask
from unmask.contrib.models.tiny import tiny_denoiser
from unmask.core.spec import SpecError
from unmask.core.types import Commit, StepView
from unmask.strategies import EntropyThresholdPolicy, FreeDavePolicy, LocalLeapPolicy, ProphetStop, ThresholdPolicy
from unmask.testing import FakeDenoiser
from unmask.testing.generators import step_views

PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(model, policy="topk", stop=None, cache="none", gen_length=32, block_length=8, on_step=None, prompts=PROMPTS):
    return unmask.decode(model, prompts, gen_length=gen_length, block_length=block_length, policy=policy, stop=stop,
                         cache=cache, on_step=on_step)


# --- Prophet ---------------------------------------------------------------------------------------------


def test_prophet_with_infinite_thresholds_is_topk():
    model = FakeDenoiser()
    expected = _decode(model)
    result = _decode(model, stop="prophet:early=inf,mid=inf,late=inf")
    assert torch.equal(result.tokens, expected.tokens) and torch.equal(result.nfe, expected.nfe)


def _gap_view(gap: float, global_step: int, total_steps: int = 30) -> StepView:
    """A one-row view whose answer region has logit gap ``gap`` at every position."""
    width, vocab = 12, 8
    logits = torch.zeros(1, width, vocab)
    logits[..., 3] = gap
    x = torch.full((1, width), 7)
    x[:, :2] = 1
    return StepView(
        x=x, x0=x, confidence=torch.zeros(1, width), masked=x == 7, window=torch.ones(1, width, dtype=torch.bool),
        row_active=torch.ones(1, dtype=torch.bool), schedule_k=torch.ones(1, dtype=torch.long),
        nfe=torch.ones(1, dtype=torch.long), gen_start=2, block_start=2, block_end=12, mask_token_id=7,
        eos_token_id=6, global_step=global_step, total_steps=total_steps, span_logits=logits, span_start=0,
    )


@pytest.mark.parametrize("gap, step, fires", [(6.0, 5, False), (6.0, 12, True), (6.0, 25, True), (4.0, 12, False),
                                              (4.0, 25, True), (7.5, 0, True), (7.4, 0, False)])
def test_prophet_fires_at_its_phase_threshold(gap, step, fires):
    """Progress (step + 1) / 30: < 0.33 early (7.5), < 0.67 mid (5.0), later late (2.5), inclusive."""
    assert bool(ProphetStop().check(_gap_view(gap, step)).done[0]) is fires


def test_prophet_fill_is_the_exit_steps_argmax_and_ends_the_row():
    model = FakeDenoiser()
    views = []
    result = _decode(model, stop="prophet:early=1,mid=1,late=1,answer=3", on_step=views.append)
    assert not (result.tokens == model.mask_token_id).any()
    first = views[0]
    done_rows = ProphetStop(early=1, mid=1, late=1, answer=3).check(first).done
    assert done_rows.any()
    for row in done_rows.nonzero().flatten().tolist():
        assert int(result.nfe[row]) == 1  # the exit step
        argmax = first.span_logits[row].argmax(-1)
        filled = (first.x[row, first.gen_start:] == model.mask_token_id)
        assert torch.equal(result.tokens[row][filled], argmax[first.gen_start:][filled])


def test_prophet_waits_for_a_fed_span_that_covers_the_masks():
    """Under the dual cache only a block's first step feeds every column: no fill from missing logits."""
    model = tiny_denoiser("llama")
    settings = dict(stop="prophet:early=inf,mid=0,late=0", gen_length=16, block_length=8, prompts=[[3, 4, 5]])
    plain = _decode(model, cache="none", **settings)
    dual = _decode(model, cache="dual", **settings)
    assert int(plain.nfe[0]) == 6  # progress 6/16 >= 0.33: the mid phase
    assert int(dual.nfe[0]) == 9  # the next block's first step, a full forward
    assert not (dual.tokens == model.mask_token_id).any()


# --- LocalLeap ---------------------------------------------------------------------------------------------


@PROPERTY
@given(view=step_views())
def test_local_leap_commits_between_its_two_thresholds(view):
    tau, relaxed, radius = 0.6, 0.3, 2
    chosen = LocalLeapPolicy(tau=tau, relaxed=relaxed, radius=radius).select(view).mask
    strict = ThresholdPolicy(tau=tau).select(view).mask
    loose = ThresholdPolicy(tau=relaxed).select(view).mask
    assert not (strict & ~chosen).any() and not (chosen & ~loose).any()
    confidence = view.candidate_confidence
    anchors = (confidence >= tau).nonzero().tolist()
    top1 = ThresholdPolicy(tau=1.0).select(view).mask  # the top-1 alone (no confidence exceeds 1)
    for row, column in (chosen & ~top1 & (confidence < tau)).nonzero().tolist():
        assert any(r == row and abs(c - column) <= radius for r, c in anchors)
    no_anchor = ~(confidence >= tau).any(1)
    assert torch.equal(chosen[no_anchor], top1[no_anchor])


@PROPERTY
@given(view=step_views())
def test_local_leap_without_a_neighbourhood_is_threshold(view):
    expected = ThresholdPolicy(tau=0.7).select(view).mask
    assert torch.equal(LocalLeapPolicy(tau=0.7, relaxed=0.7, radius=3).select(view).mask, expected)
    assert torch.equal(LocalLeapPolicy(tau=0.7, relaxed=0.2, radius=0).select(view).mask, expected)


def test_local_leap_decodes_like_threshold_step_for_step():
    model = FakeDenoiser()
    expected = _decode(model, policy="threshold:tau=0.8")
    for spec in ("local_leap:tau=0.8,relaxed=0.8", "local_leap:tau=0.8,relaxed=0.5,radius=0"):
        result = _decode(model, policy=spec)
        assert torch.equal(result.tokens, expected.tokens) and torch.equal(result.commit_step, expected.commit_step)
    assert _decode(model, policy="local_leap:tau=0.8,relaxed=0.3").nfe.sum() <= expected.nfe.sum()


# --- dParallel's entropy threshold ---------------------------------------------------------------------------


def _entropy(view):
    probability = torch.softmax(view.logits.double(), -1)
    entropy = torch.full(view.x.shape, math.inf, dtype=torch.float64)
    entropy[:, view.block_start:view.block_end] = -(probability * (probability + 1e-12).log()).sum(-1)
    return entropy.masked_fill(~view.candidates, math.inf)


@PROPERTY
@given(view=step_views())
def test_entropy_threshold_commits_the_argmin_and_everything_under_h(view):
    entropy = _entropy(view)
    for h, strict in ((0.8, False), (0.8, True), (-1.0, False)):
        chosen = EntropyThresholdPolicy(h=h, strict=strict).select(view).mask
        under = (entropy < h) if strict else (entropy <= h)
        lowest = torch.zeros_like(chosen)
        active = view.candidates.any(1)
        lowest[active, entropy[active].argmin(1)] = True
        assert torch.equal(chosen & ~lowest, under & view.candidates & ~lowest)
        assert (chosen & lowest).sum() == active.sum()


def test_entropy_threshold_extremes():
    model = FakeDenoiser()
    one = _decode(model, policy="entropy_threshold:h=-1")
    assert one.nfe.tolist() == [32] * len(PROMPTS)
    whole = _decode(model, policy="entropy_threshold:h=inf")
    assert whole.nfe.tolist() == [4] * len(PROMPTS)  # a block per step


# --- FreeDave ----------------------------------------------------------------------------------------------


def test_freedave_with_one_draft_is_topk_forwards_included():
    model = FakeDenoiser()
    expected = _decode(model)
    result = _decode(model, policy="freedave:draft_steps=1")
    assert torch.equal(result.tokens, expected.tokens) and torch.equal(result.nfe, expected.nfe)
    assert result.candidate_rows.sum() == 0


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_freedave_is_lossless_with_each_cache(cache, architecture):
    """Same tokens as one-token-per-step topk with the same cache, batch of four, fewer forwards."""
    model = tiny_denoiser(architecture)
    expected = _decode(model, cache=cache, gen_length=24, block_length=8)
    for drafts in (2, 4, 8):
        result = _decode(model, policy=f"freedave:draft_steps={drafts}", cache=cache, gen_length=24, block_length=8)
        assert torch.equal(result.tokens, expected.tokens), drafts
        assert (result.nfe <= expected.nfe).all() and result.nfe.sum() < expected.nfe.sum()
        assert (result.candidate_rows >= result.nfe - 3).all()  # K drafts per scored forward, 3 block starts


def test_freedave_rows_decode_as_alone():
    model = FakeDenoiser(seed=3)
    batch = _decode(model, policy="freedave:draft_steps=4")
    for row, prompt in enumerate(PROMPTS):
        alone = _decode(model, policy="freedave:draft_steps=4", prompts=[prompt])
        assert torch.equal(alone.tokens[0], batch.tokens[row]) and alone.nfe[0] == batch.nfe[row]


def test_freedave_refuses_sampling():
    with pytest.raises(ValueError, match="greedy decoding only"):
        unmask.decode(FakeDenoiser(), PROMPTS, gen_length=8, policy="freedave", temperature=0.5)


# --- the hooks themselves ------------------------------------------------------------------------------------


class Evaluating:
    """Scores the top-1 state and commits it, naming it as evaluated (or breaking the hook's rules)."""

    def __init__(self, fault=None):
        self.fault = fault

    def select(self, view):
        top1 = ThresholdPolicy(tau=1.0).select(view).mask
        canvas = torch.where(top1, view.x0, view.x)[None]
        if self.fault == "shape":
            view.evaluate(canvas[0])
        if self.fault == "committed":
            changed = canvas.clone()
            changed[0, :, 0] = (changed[0, :, 0] + 1) % 5
            view.evaluate(changed)
        scored = view.evaluate(canvas)
        assert scored.x0.shape == (1, *view.x.shape) and scored.span_logits.shape[0] == 1
        if self.fault == "mismatch":  # commits another position than the scored canvas holds
            top1 = _last(view)
        return Commit(mask=top1, tokens=view.x0, evaluated=torch.zeros_like(view.nfe))


def _last(view):
    """The last candidate of each active row: not what the scored top-1 canvas holds (unless it is both)."""
    mask = torch.zeros_like(view.candidates)
    columns = torch.arange(view.x.shape[1]).expand_as(view.x)
    last = torch.where(view.candidates, columns, -1).max(1).values
    rows = last >= 0
    mask[rows, last[rows]] = True
    return mask


def test_evaluated_candidates_replace_the_next_forward():
    """Scoring the next state and committing it costs one forward per step, as topk's own does."""
    model = FakeDenoiser()
    expected = _decode(model)
    result = _decode(model, policy=Evaluating())
    assert torch.equal(result.tokens, expected.tokens)
    # One forward per step, plus the first of the decode (no earlier candidate to take logits from).
    assert (result.nfe == expected.nfe + 1).all() and torch.equal(result.candidate_rows, expected.nfe)


@pytest.mark.parametrize("fault, error, message", [
    ("shape", TypeError, r"evaluate takes a \(K, 4, \d+\) long tensor"),
    ("committed", ValueError, "may only fill masked positions"),
    ("mismatch", ValueError, "Commit.evaluated names candidates that rows"),
])
def test_the_candidate_hook_refuses_misuse(fault, error, message):
    with pytest.raises(error, match=message):
        _decode(FakeDenoiser(), policy=Evaluating(fault))


@pytest.mark.parametrize("spec, message", [
    ("local_leap:radius=-1", "radius must be an integer >= 0"),
    ("local_leap:tau=nan", r"tau must lie in \[0, 1\]"),
    ("local_leap:tau=0.5,relaxed=0.8", "relaxed must be at most tau"),
    ("freedave:draft_steps=0", "draft_steps must be a positive integer"),
    ("freedave:draft_steps=2.5", "draft_steps must be a positive integer"),
    ("entropy_threshold:h=nan", "h must be a number"),
    ("prophet:early=nan", "early must be a number >= 0"),
    ("prophet:late=-1", "late must be a number >= 0"),
    ("prophet:answer=0", "answer must be a positive integer"),
])
def test_bad_method_parameters_are_one_clear_error(spec, message):
    kind = "stops" if spec.startswith("prophet") else "policies"
    with pytest.raises(SpecError, match=message):
        unmask.registry().create(kind, spec)


def test_a_policy_may_reach_past_its_block_when_it_says_so():
    @attrs.frozen
    class AllMasks:
        reach: str = "block"

        def select(self, view):
            mask = view.masked & view.row_active[:, None]
            mask[:, :view.gen_start] = False
            return mask

    model = FakeDenoiser()
    with pytest.raises(ValueError, match="not masked positions of the current block"):
        _decode(model, policy=AllMasks())
    result = _decode(model, policy=AllMasks(reach="canvas"))
    assert result.nfe.tolist() == [1] * len(PROMPTS) and not (result.tokens == model.mask_token_id).any()
