"""Bad input to the Python API and the engine: a named exception naming the argument and the rule, never a
hang on a broken model or a bare traceback from inside torch."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

import unmask
from unmask.core.spec import SpecError
from unmask.core.types import Commit, DecodeConfig
from unmask.testing import FakeDenoiser



class Broken(FakeDenoiser):
    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def forward(self, input_ids, **kwargs):
        self.forwards = getattr(self, "forwards", 0) + 1
        logits = super().forward(input_ids, **kwargs)
        if self.fault == "short":
            return logits[:, :-1]
        if self.fault == "nan":
            return logits.masked_fill(torch.ones_like(logits, dtype=torch.bool), math.nan)
        return torch.full_like(logits, -math.inf)


@pytest.mark.parametrize("fault, message", [("short", "step 0: the model returned logits"),
                                            ("nan", "step 0: the model returned NaN"),
                                            ("-inf", "step 0: the model returned NaN or infinite")])
def test_a_broken_model_raises_at_once(fault, message):
    model = Broken(fault)
    with pytest.raises(ValueError, match=message):
        unmask.decode(model, [[1, 2, 3]], gen_length=8)
    assert model.forwards == 1  # the first forward's logits are checked


class CommitTokens:
    """Commits the block's first masked position with the given tokens."""

    def __init__(self, make_tokens):
        self.make_tokens = make_tokens

    def select(self, view):
        mask = torch.zeros_like(view.masked)
        first = view.candidates.float().argmax(1)
        mask[torch.arange(len(first)), first] = view.row_active
        return Commit(mask=mask, tokens=self.make_tokens(view))


@pytest.mark.parametrize("make_tokens, error, message", [
    (lambda v: torch.full_like(v.x, 10_000), ValueError, "outside the vocabulary"),
    (lambda v: torch.full_like(v.x, -5), ValueError, "outside the vocabulary"),
    (lambda v: v.x0.float(), TypeError, "Commit.tokens must be a long tensor"),
    (lambda v: v.x0[:, :-1], TypeError, "Commit.tokens must be a long tensor"),
])
def test_commit_tokens_are_checked(make_tokens, error, message):
    with pytest.raises(error, match=message):
        unmask.decode(FakeDenoiser(), [[1, 2, 3]], gen_length=4, policy=CommitTokens(make_tokens))


fake = FakeDenoiser()


@pytest.mark.parametrize("call, error, message", [
    (lambda: unmask.decode(fake, [[1, 2]], policy=None), SpecError, "policy must be a spec string"),
    (lambda: unmask.decode(fake, [[1, 2]], policy=42), SpecError, "policy must be a spec string"),
    (lambda: unmask.decode(fake, [[1, 2]], stop=42), SpecError, "stop must be"),
    (lambda: unmask.decode(fake, [[1, 2]], cache=object()), SpecError, "cache must be"),
    (lambda: unmask.decode(fake, [[1, 2]], policy=("topk",)), SpecError, "spec tuple must be"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="threshold:tau=abc"), SpecError, "tau must be a number"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="threshold:tau=true"), SpecError, "tau must be a number"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="threshold:tau=nan"), SpecError, r"tau must lie in \[0, 1\]"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="entropy_bound:bound=nan"), SpecError, "bound must be a finite number >= 0"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="learn2pd:filter=42"), SpecError, "filter must be a trained filter"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="nope"), ValueError, "nope"),
    (lambda: unmask.decode(fake, [[1, 30]]), ValueError, "token id 30 is outside the model's vocabulary of 24"),
    (lambda: unmask.decode(fake, [[1, -2]]), ValueError, "token id -2 is negative"),
    (lambda: unmask.decode(fake, [[1], []]), ValueError, r"prompt\(s\) \[1\] are empty"),
    (lambda: unmask.decode(fake, [[1, 2]], mask_token_id=fake.eos_token_id), ValueError, "both"),
    (lambda: unmask.decode(fake, [[1, 2]], mask_token_id=-1), ValueError, "mask_token_id must be a token id"),
    (lambda: DecodeConfig(temperature=math.nan), ValueError, "temperature must be a finite number"),
    (lambda: DecodeConfig(temperature=math.inf), ValueError, "temperature must be a finite number"),
    (lambda: DecodeConfig(gen_length=16, steps=32), ValueError, "steps=32 must be at most gen_length=16"),
    (lambda: DecodeConfig(gen_length=16.0), ValueError, "gen_length must be a positive integer"),
    (lambda: DecodeConfig(gen_length=True), ValueError, "gen_length must be a positive integer"),
    (lambda: DecodeConfig(block_length=0), ValueError, "block_length must be a positive integer"),
    (lambda: DecodeConfig(seed="1"), ValueError, "seed must be an integer >= 0"),
    (lambda: unmask.decode(fake, torch.tensor([[1.0, 2.0]])), ValueError, "input_ids must be a 2-D integer tensor"),
    (lambda: unmask.decode(fake, torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 2]])), ValueError,
     "attention_mask must hold only 0 and 1"),
])
def test_api_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_prompt_longer_than_the_models_positions_is_refused():
    model, _ = unmask.load("reference")
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        unmask.decode(model, [[5] * 500], gen_length=32)
    block_model, _ = unmask.load("reference-block")
    with pytest.raises(ValueError, match="gen_length=32, rounded up to whole blocks of 32, exceeds the model's 512"):
        unmask.decode(block_model, [[5] * 500], gen_length=32)


def test_an_unk_inside_an_answer_scores_wrong():
    from unmask.contrib.models.transformers import decode_answers
    from unmask.contrib.tasks import samples, score

    model, tokenizer = unmask.load("reference")
    sample = samples("copy", 1, 0)[0]
    ids = tokenizer(sample.answer)["input_ids"]
    for inside, correct in ((ids, True), (ids[:1] + [tokenizer.unk_token_id] + ids[1:], False)):
        tokens = torch.tensor([inside + [model.eos_token_id]])
        result = unmask.decode(model, [[5]], gen_length=4)  # a result whose tokens are then replaced
        result = attrs.evolve(result, tokens=tokens, answer_lengths=torch.tensor([len(inside)]))
        answer = decode_answers(tokenizer, result)[0]
        assert score(sample, answer) is correct, answer


@pytest.mark.parametrize("call, message", [
    (lambda: unmask.decode(fake, [[1, 2]], mask_token_id=99), "mask_token_id=99 is outside the model's vocabulary"),
    (lambda: DecodeConfig(seed=2**70), r"seed must be an integer >= 0 and < 2\*\*64"),
    (lambda: unmask.decode(fake, [[1, 2]], seed=2**64), r"seed must be an integer >= 0 and < 2\*\*64"),
])
def test_fresh_api_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_logits_whose_sum_overflows_are_checked_term_by_term():
    from unmask.core.scoring import check_logits

    huge = torch.full((2, 5, 10), 3e37)  # finite, but their float32 sum is infinite
    check_logits(huge, (2, 5), 3, 0)
    huge[1, 4, 9] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_logits(huge, (2, 5), 3, 0)
