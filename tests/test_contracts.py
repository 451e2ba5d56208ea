"""Every registered component passes the public contract checks; the checks catch broken components."""

import attrs
import pytest
import torch

import unmask
from unmask.testing import check_cache_manager, check_constraint, check_stop_criterion, check_unmask_policy

REGISTRY = unmask.registry()


@pytest.mark.parametrize("name", REGISTRY.names("policies"))
def test_policy_contract(name):
    check_unmask_policy(name)


@pytest.mark.parametrize("name", REGISTRY.names("stops"))
def test_stop_contract(name):
    check_stop_criterion(name)


@pytest.mark.parametrize("name", REGISTRY.names("caches"))
def test_cache_contract(name, kv_models):
    check_cache_manager(name, models=kv_models)


@pytest.mark.parametrize("name", REGISTRY.names("constraints"))
def test_constraint_contract(name, tmp_path):
    if name == "json_schema":
        schema = tmp_path / "schema.json"
        schema.write_text('{"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}')
        name = f"json_schema:schema='{schema}'"
    check_constraint(name)


def test_combined_specs_pass_the_contract():
    check_unmask_policy("topk + threshold:tau=0.8", max_examples=15)
    check_stop_criterion("eotp + max_nfe:n=5", max_examples=15)


@attrs.frozen
class OutsideBlock:
    def select(self, view):
        return view.masked & ~view.window


@attrs.frozen
class Mutating:
    def select(self, view):
        view.confidence.zero_()
        return torch.zeros_like(view.masked)


@attrs.frozen
class Flaky:
    def select(self, view):
        picks = torch.rand(view.x.shape) < 0.5
        return picks & view.candidates


@attrs.frozen
class CutsContent:
    def check(self, view):
        return unmask.StopDecision(done=torch.zeros_like(view.row_active), end=torch.full_like(view.nfe, view.gen_start))


@attrs.frozen
class Unfinishes:
    def check(self, view):
        return unmask.StopDecision(done=(view.nfe % 2 == 1))


@pytest.mark.parametrize(
    "policy,message",
    [(OutsideBlock(), "masked ∩ block"), (Mutating(), "mutated"), (Flaky(), "different commits")],
)
def test_policy_checks_catch_broken_policies(policy, message):
    with pytest.raises(AssertionError, match=message):
        check_unmask_policy(policy, max_examples=30)


@pytest.mark.parametrize("stop,message", [(CutsContent(), "cuts before"), (Unfinishes(), "unfinished")])
def test_stop_checks_catch_broken_stops(stop, message):
    with pytest.raises(AssertionError, match=message):
        check_stop_criterion(stop, max_examples=30)
