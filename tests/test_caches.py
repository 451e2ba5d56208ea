"""Prefix and dual KV caches: exactness where they claim it, contracts, clear errors."""

import pytest
import torch

import unmask
from unmask.caches import DualCache, PrefixCache
from unmask.core.types import CanvasState
from unmask.contrib.models.tiny import tiny_denoiser
from unmask.testing import FakeDenoiser, RecordingModel, check_cache_manager

PROMPTS = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def denoiser(request):
    return tiny_denoiser(request.param)


def canvas(model, gen_length=12):
    input_ids, attention_mask = unmask.pad_prompts(PROMPTS, model.eos_token_id)
    x = torch.cat([input_ids, torch.full((len(PROMPTS), gen_length), model.mask_token_id)], 1)
    attention = torch.cat([attention_mask, torch.ones(len(PROMPTS), gen_length, dtype=torch.long)], 1)
    return x, attention, (attention.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("manager", [PrefixCache, DualCache])
def test_partial_forwards_on_an_unchanged_canvas_equal_the_full_forward(denoiser, manager):
    x, attention, positions = canvas(denoiser)
    with torch.no_grad():
        full = denoiser(x, position_ids=positions, attention_mask=attention)
        cache = manager()
        cache.reset(denoiser)
        for step in range(3):
            state = CanvasState(input_ids=x, attention_mask=attention, position_ids=positions, block_start=9,
                                block_end=13, step=step, lookbehind=int(denoiser.shift_logits))
            plan = cache.plan(state)
            logits = denoiser(x[:, plan.start:plan.end], position_ids=positions[:, plan.start:plan.end],
                              attention_mask=plan.attention_mask, past_key_values=plan.past_key_values)
            assert (plan.start, plan.end) == ((0, 17) if step == 0 else (9 - state.lookbehind, 17 if manager is PrefixCache else 13))
            # With shifted logits the fed column left of the block only gives the block its context.
            skip = 0 if step == 0 else state.lookbehind
            torch.testing.assert_close(logits[:, skip:], full[:, plan.start + skip:plan.end], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache", ["prefix:refresh_every=1", "dual:refresh_every=1"])
@pytest.mark.parametrize("stop", [None, "eotp"])
def test_refreshing_every_step_decodes_like_no_cache(denoiser, cache, stop):
    settings = dict(gen_length=16, block_length=4, policy="threshold:tau=0.3", stop=stop)
    expected = unmask.decode(denoiser, PROMPTS, cache="none", **settings)
    actual = unmask.decode(denoiser, PROMPTS, cache=cache, **settings)
    assert torch.equal(actual.tokens, expected.tokens) and torch.equal(actual.nfe, expected.nfe)


@pytest.mark.parametrize("cache", ["prefix", "dual", "dual:dtype=bfloat16"])
def test_first_step_of_every_block_is_exact(denoiser, cache):
    """A block's first step runs the whole canvas: its logits equal a cache-free forward of that canvas."""
    firsts = []

    def record(view):
        if view.step == 0:
            firsts.append((view.x.clone(), view.logits.clone(), view.block_start))

    unmask.decode(denoiser, PROMPTS, gen_length=16, block_length=4, policy="threshold:tau=0.3", cache=cache,
                  on_step=record)
    _, attention_mask = unmask.pad_prompts(PROMPTS, denoiser.eos_token_id)
    attention = torch.cat([attention_mask, torch.ones(len(PROMPTS), 16, dtype=torch.long)], 1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    assert len(firsts) == 4
    for x, logits, start in firsts:
        before = x.clone()
        before[:, start:] = denoiser.mask_token_id  # the block and what follows are masked before its first step
        with torch.no_grad():
            full = denoiser(before, position_ids=positions, attention_mask=attention)
        torch.testing.assert_close(logits, full[:, start:start + 4], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["prefix", "dual"])
def test_cache_contract(name, kv_models):
    check_cache_manager(name, models=kv_models)


def test_caches_are_listed():
    assert {"none", "prefix", "dual"} <= set(unmask.registry().names("caches"))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_model_without_cache_support_is_a_clear_error(cache):
    with pytest.raises(ValueError, match="needs a model that takes a KV cache.*cache='none'"):
        unmask.decode(FakeDenoiser(), [[1, 2]], gen_length=8, cache=cache)


@pytest.mark.parametrize("spec,message", [("dual:refresh_every=-1", "refresh_every must be"),
                                          ("prefix:dtype=int8", "dtype must be one of")])
def test_bad_cache_parameters(spec, message):
    with pytest.raises(unmask.SpecError, match=message):
        unmask.create("caches", spec)


def test_caches_save_forwarded_tokens(denoiser):
    """Later steps of a block feed fewer columns: the point of the caches."""
    fed = {}
    for cache in ("none", "prefix", "dual"):
        counting = RecordingModel(denoiser)
        unmask.decode(counting, PROMPTS, gen_length=16, block_length=4, policy="topk", cache=cache)
        fed[cache] = sum(columns for _, columns in counting.fed)
    assert fed["dual"] < fed["prefix"] < fed["none"]
