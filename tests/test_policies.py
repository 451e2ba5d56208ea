import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import unmask
from unmask.strategies import EntropyBoundPolicy, OraclePolicy, ThresholdPolicy, TopKPolicy, UnionPolicy
from unmask.testing import step_views


@given(view=step_views(), k=st.integers(1, 10))
def test_topk_commits_exactly_min_k_candidates(view, k):
    commit = TopKPolicy(k=k).select(view).mask
    expected = torch.clamp(view.candidates.sum(1), max=k)
    assert torch.equal(commit.sum(1), expected)
    schedule = TopKPolicy().select(view).mask
    assert torch.equal(schedule.sum(1), torch.minimum(view.candidates.sum(1), view.schedule_k))


@given(view=step_views())
def test_topk_takes_the_most_confident(view):
    commit = TopKPolicy(k=2).select(view).mask
    confidence = view.candidate_confidence
    for row in range(view.x.shape[0]):
        if commit[row].any() and (view.candidates[row] & ~commit[row]).any():
            assert confidence[row][commit[row]].min() >= confidence[row][view.candidates[row] & ~commit[row]].max()


@given(view=step_views(), low=st.floats(0, 1), high=st.floats(0, 1))
def test_raising_tau_never_adds_commits(view, low, high):
    low, high = sorted((low, high))
    loose, strict = ThresholdPolicy(tau=low).select(view).mask, ThresholdPolicy(tau=high).select(view).mask
    assert not (strict & ~loose).any()
    assert torch.equal(strict.any(1), view.candidates.any(1))  # always at least the top-1


@given(view=step_views(), low=st.floats(0, 3), high=st.floats(0, 3))
def test_entropy_bound_grows_with_the_bound(view, low, high):
    low, high = sorted((low, high))
    small, large = EntropyBoundPolicy(bound=low).select(view).mask, EntropyBoundPolicy(bound=high).select(view).mask
    assert not (small & ~large).any()
    assert torch.equal(small.any(1), view.candidates.any(1))


@given(view=step_views())
def test_union_is_the_or_of_its_members(view):
    members = [TopKPolicy(k=1), ThresholdPolicy(tau=0.5)]
    union = UnionPolicy(policies=members).select(view).mask
    assert torch.equal(union, members[0].select(view).mask | members[1].select(view).mask)


def test_specs_with_plus_build_unions():
    policy = unmask.create("policies", "topk + threshold:tau=0.8")
    assert isinstance(policy, UnionPolicy)
    assert policy.policies == (TopKPolicy(), ThresholdPolicy(tau=0.8))


@pytest.mark.parametrize("steps", [16, 8])
def test_oracle_reproduces_its_reference(model, prompts, steps):
    reference = unmask.decode(model, prompts, gen_length=16, block_length=8, steps=steps)
    oracle = unmask.decode(model, prompts, gen_length=16, block_length=8, policy=OraclePolicy(reference=reference.tokens))
    assert torch.equal(oracle.tokens, reference.tokens)
    assert (oracle.nfe <= reference.nfe).all() and (oracle.nfe < reference.nfe).any()


def test_oracle_reaches_any_reference(model, prompts):
    target = torch.randint(0, model.vocab_size - 2, (len(prompts), 16), generator=torch.Generator().manual_seed(0))
    result = unmask.decode(model, prompts, gen_length=16, block_length=8, policy=OraclePolicy(reference=target))
    assert torch.equal(result.tokens, target)


def test_oracle_rejects_a_reference_of_the_wrong_shape(model):
    with pytest.raises(ValueError, match="reference has 2 rows but the decode has 1"):
        unmask.decode(model, [[1]], gen_length=16, policy=OraclePolicy(reference=torch.zeros(2, 16, dtype=torch.long)))
    with pytest.raises(unmask.SpecError, match="reference"):
        unmask.create("policies", ("oracle", {"reference": torch.zeros(4)}))


@pytest.mark.parametrize(
    "spec,message",
    [("threshold:tau=2", "tau must lie in"), ("topk:k=0", "k must be"), ("topk:q=3", "accepts: k"),
     ("entropy_bound:bound=-1", "bound must be")],
)
def test_bad_parameters_name_the_rule(spec, message):
    with pytest.raises(unmask.SpecError, match=message):
        unmask.create("policies", spec)


def test_random_policy_uses_the_decode_seed(model, prompts):
    first = unmask.decode(model, prompts, gen_length=16, policy="random", seed=1)
    again = unmask.decode(model, prompts, gen_length=16, policy="random", seed=1)
    other = unmask.decode(model, prompts, gen_length=16, policy="random", seed=2)
    assert torch.equal(first.tokens, again.tokens) and not torch.equal(first.tokens, other.tokens)
