"""Rows added to a running decode (``Decoding.add``): they join at the next block boundary and decode as
they do alone, the rows already there go on as before, and finished rows can be read before the end."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unmask
from unmask.contrib.models.tiny import tiny_denoiser
from unmask.testing import FakeDenoiser

SETTINGS = {"gen_length": 16, "block_length": 8}
FIRST = [[1, 2, 3], [4, 5]]
LATE = [[6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20]]  # the first is longer than the canvas's prompts


def _joined(model, policy, *, cache=None, stop="none", at_step=1, first=FIRST, late=LATE):
    """Decode ``first``, adding ``late`` after step ``at_step`` (or the last step, where the decode is shorter:
    the rows then join at its end)."""
    arguments = {"policy": policy, "cache": cache, "stop": stop, **SETTINGS}
    at_step = min(at_step, sum(1 for _ in unmask.steps(model, first, **arguments)))
    decoding = unmask.steps(model, first, **arguments)
    added, finished = None, {}
    for view in decoding:
        if view.global_step + 1 == at_step:
            added = decoding.add(late)
        for row in decoding.finished():  # a finished row's answer stays as it is
            finished.setdefault(row, decoding.rows([row]).tokens[0].clone())
    return decoding.result, added, finished


@pytest.mark.parametrize("model_name", ["fake", "reference", "qwen2-block"])
@pytest.mark.parametrize("policy", ["threshold:tau=0.5", "freedave"])
@pytest.mark.parametrize("at_step", [1, 3])
def test_added_rows_decode_as_alone_and_the_others_as_before(model_name, policy, at_step):
    model = {"fake": lambda: FakeDenoiser(seed=2), "reference": lambda: unmask.load("reference")[0],
             "qwen2-block": lambda: tiny_denoiser("qwen2", block_size=8)}[model_name]()
    before = unmask.decode(model, FIRST, policy=policy, **SETTINGS)
    alone = unmask.decode(model, LATE, policy=policy, **SETTINGS)
    result, added, finished = _joined(model, policy, at_step=at_step)
    assert added == [2, 3]
    assert torch.equal(result.tokens[:2], before.tokens) and torch.equal(result.nfe[:2], before.nfe)
    assert torch.equal(result.tokens[2:], alone.tokens)
    # counted from the step they joined at (and later on the batch's shared clock, as in any batch)
    assert int(result.commit_step[2:].min()) == 0 and (result.commit_step[2:] >= 0).all()
    if getattr(model, "block_size", None) is None:
        assert torch.equal(result.nfe[2:], alone.nfe)
    else:  # the exact cache stores a joining row's prompt beside the finished block: one forward more at most
        assert ((result.nfe[2:] - alone.nfe) <= 1).all()
    assert set(finished) == {0, 1, 2, 3}
    for row, tokens in finished.items():
        assert torch.equal(tokens, result.tokens[row])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_rows_join_under_a_block_cache(cache):
    model = tiny_denoiser("llama")
    before = unmask.decode(model, FIRST, policy="threshold:tau=0.5", cache=cache, **SETTINGS)
    alone = unmask.decode(model, LATE, policy="threshold:tau=0.5", cache=cache, **SETTINGS)
    result, _, _ = _joined(model, "threshold:tau=0.5", cache=cache, at_step=2)
    assert torch.equal(result.tokens, torch.cat([before.tokens, alone.tokens]))
    assert torch.equal(result.nfe, torch.cat([before.nfe, alone.nfe]))


def test_rows_join_a_decode_whose_rows_stopped(eos_model):
    """EoTP cut the first rows' canvases; a row that joins later still decodes as alone."""
    alone = unmask.decode(eos_model, LATE, stop="eotp", **SETTINGS)
    result, _, _ = _joined(eos_model, "topk", stop="eotp", at_step=12)
    assert torch.equal(result.tokens[2:], alone.tokens)
    assert torch.equal(result.answer_lengths[2:], alone.answer_lengths)


@settings(max_examples=15)
@given(first=st.lists(st.lists(st.integers(1, 20), min_size=1, max_size=12), min_size=1, max_size=3),
       late=st.lists(st.lists(st.integers(1, 20), min_size=1, max_size=30), min_size=1, max_size=3),
       at_step=st.integers(1, 20))
def test_any_row_joins_as_alone(first, late, at_step):
    """(On a model whose logits do not depend on the padding: a random-weight transformer's near-ties can
    flip with the left padding, in any batch, joined or not.)"""
    model = FakeDenoiser(seed=3)
    alone = unmask.decode(model, late, policy="threshold:tau=0.5", **SETTINGS)
    result, added, _ = _joined(model, "threshold:tau=0.5", at_step=at_step, first=first, late=late)
    assert added == list(range(len(first), len(first) + len(late)))
    assert torch.equal(result.tokens[len(first):], alone.tokens)
    assert not (result.tokens == model.mask_token_id).any()


@pytest.mark.parametrize("arguments, rule", [
    ({"stop": "prophet"}, "its stop reads the decode's clock"),
    ({"policy": "random"}, "its policy reads the decode's clock or random stream"),
    ({"temperature": 0.5}, "temperature > 0"),
])
def test_rows_cannot_join_a_decode_they_would_not_decode_alone_in(arguments, rule):
    decoding = unmask.steps(FakeDenoiser(), FIRST, **{**SETTINGS, **arguments})
    assert not decoding.joinable
    with pytest.raises(ValueError, match=rule):
        decoding.add(LATE)


def test_added_prompts_are_checked_when_added_and_not_after_the_end():
    model = FakeDenoiser()
    decoding = unmask.steps(model, FIRST, **SETTINGS)
    with pytest.raises(ValueError, match="input_ids: token id -1 is negative"):
        decoding.add([[-1]])
    with pytest.raises(ValueError, match="prompts must hold at least one prompt"):
        decoding.add([])
    assert decoding.add([[1]]) == [2]
    with pytest.raises(ValueError, match="rows: the batch has rows 0 to 1 now"):
        decoding.rows([2])
    decoding.run()
    assert not decoding.joinable
    with pytest.raises(RuntimeError, match="add: the decode has ended"):
        decoding.add(LATE)
