"""Elastic-Cache: exact where every layer is recomputed, the dual cache where nothing is, a recomputed share
that grows with the threshold, batch invariance, its cost in the result, and clear refusals."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import unmask
from unmask.contrib.models.reference import load_reference_model
from unmask.contrib.models.tiny import tiny_denoiser
from unmask.contrib.tasks import samples
from unmask.contrib.models.transformers import encode_prompts
from unmask.core.types import CanvasState
from unmask.testing import FakeDenoiser

PROMPTS = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]


@pytest.fixture(scope="module", params=["llama", "qwen2"])  # qwen2: logits shifted, as Dream's are
def denoiser(request):
    return tiny_denoiser(request.param)


@pytest.fixture(scope="module")
def reference():
    model, tokenizer = load_reference_model()
    prompts = [s.prompt for task in ("shuffle", "replace_random", "chain_sum") for s in samples(task, 4, 0)]
    return model, encode_prompts(tokenizer, prompts)


@pytest.mark.parametrize("stop", ["none", "eotp"])
@pytest.mark.parametrize("policy", ["topk", "threshold:tau=0.3"])
def test_gamma_above_one_recomputes_everything_and_decodes_like_no_cache(denoiser, policy, stop):
    settings = dict(gen_length=16, block_length=8, policy=policy, stop=stop)
    expected = unmask.decode(denoiser, PROMPTS, cache="none", **settings)
    actual = unmask.decode(denoiser, PROMPTS, cache="elastic:gamma=2", **settings)
    assert torch.equal(actual.tokens, expected.tokens) and torch.equal(actual.nfe, expected.nfe)
    assert torch.equal(actual.recomputed, expected.recomputed)


def test_on_the_bundled_model_always_equals_no_cache_and_defaults_recompute_less(reference):
    model, prompts = reference
    settings = dict(gen_length=64, block_length=32, policy="threshold:tau=0.9")
    none = unmask.decode(model, prompts, cache="none", **settings)
    always = unmask.decode(model, prompts, cache="elastic:gamma=2", **settings)
    assert torch.equal(always.tokens, none.tokens) and torch.equal(always.nfe, none.nfe)
    adaptive = unmask.decode(model, prompts, cache="elastic", **settings)
    assert (adaptive.recomputed <= none.recomputed).all() and adaptive.recomputed.sum() < 0.9 * none.recomputed.sum()
    assert not (adaptive.tokens == model.mask_token_id).any()


def test_never_refreshing_with_nothing_tracked_is_the_dual_cache_within_a_block(reference):
    """One block: the dual cache runs the whole canvas once and then the block against the kept keys and
    values; so does Elastic-Cache that tracks nothing and never refreshes."""
    model, prompts = reference
    settings = dict(gen_length=32, block_length=32, policy="threshold:tau=0.9")
    dual = unmask.decode(model, prompts, cache="dual", **settings)
    elastic = unmask.decode(model, prompts, cache="elastic:gamma=-2,track_num=0", **settings)
    assert torch.equal(elastic.tokens, dual.tokens) and torch.equal(elastic.nfe, dual.nfe)
    assert torch.equal(elastic.recomputed, dual.recomputed)


def _second_forward(model, gamma, commits):
    """(B,) position-layers Elastic-Cache recomputes on the step after ``commits`` filled some masks."""
    cache = unmask.create("caches", f"elastic:gamma={gamma},track_num=2,window_length=4")
    cache.reset(model)
    ids, attention = unmask.pad_prompts(PROMPTS, model.eos_token_id)
    start = ids.shape[1]
    x = torch.cat([ids, torch.full((len(PROMPTS), 12), model.mask_token_id)], 1)
    keys = torch.cat([attention, torch.ones(len(PROMPTS), 12, dtype=torch.long)], 1)
    positions = (keys.cumsum(-1) - 1).clamp(min=0)
    rows = torch.ones(len(PROMPTS), dtype=torch.bool)
    lookbehind = int(model.shift_logits)

    def state(canvas, step):
        return CanvasState(input_ids=canvas, attention_mask=keys, position_ids=positions, block_start=start,
                           block_end=start + 6, step=step, lookbehind=lookbehind, gen_start=start)

    with torch.inference_mode():
        cache.plan(state(x, 0)).run(rows)
        later = x.clone()
        for row, column, token in commits:
            later[row, start + column] = token
        return cache.plan(state(later, 1)).run(rows)[1]


@settings(max_examples=15, deadline=None)
@given(commits=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 11), st.integers(4, 30)), max_size=8))
def test_the_recomputed_share_grows_with_gamma(denoiser, commits):
    counts = [_second_forward(denoiser, gamma, commits) for gamma in (-2, 0.0, 0.5, 0.9, 0.999, 2)]
    for lower, higher in zip(counts, counts[1:]):
        assert (lower <= higher).all(), counts


def test_batched_equals_alone_on_the_bundled_model(reference):
    model, prompts = reference
    settings = dict(gen_length=64, block_length=32, policy="threshold:tau=0.9", cache="elastic:track_num=4")
    batched = unmask.decode(model, prompts, **settings)
    for row in (0, 5, 11):
        alone = unmask.decode(model, [prompts[row]], **settings)
        assert torch.equal(alone.tokens[0], batched.tokens[row]) and alone.nfe[0] == batched.nfe[row]


def test_no_cache_counts_every_column_of_every_layer_per_forward(denoiser):
    result = unmask.decode(denoiser, PROMPTS, gen_length=16, block_length=8, policy="topk:k=2")
    width = max(map(len, PROMPTS)) + 16
    assert torch.equal(result.recomputed, result.nfe * width * denoiser.num_layers)
    assert "recomputed" in result.to_dict()


def test_refusals_name_the_rule(denoiser):
    with pytest.raises(ValueError, match="runs_layers"):
        unmask.decode(FakeDenoiser(), [[3, 4]], gen_length=8, block_length=8, cache="elastic")
    with pytest.raises(ValueError, match="runs_layers"):
        unmask.decode(tiny_denoiser("llama", block_size=4), PROMPTS, gen_length=8, block_length=4, cache="elastic")
    with pytest.raises(TypeError, match="layer at a time"):
        unmask.decode(denoiser, PROMPTS, gen_length=8, block_length=8, policy="freedave", cache="elastic")
    for spec, name in [("elastic:track_num=-1", "track_num"), ("elastic:gamma=nan", "gamma"),
                       ("elastic:window_length=0", "window_length"), ("elastic:fresh_prompt=1", "fresh_prompt")]:
        with pytest.raises(ValueError, match=name):
            unmask.create("caches", spec)
