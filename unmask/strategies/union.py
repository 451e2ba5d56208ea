from __future__ import annotations

from typing import Any

import torch
from attrs import field, frozen

from unmask.core.engine import check_config
from unmask.core.needs import artefact_sha256, requirements
from unmask.core.plugins import create
from unmask.core.types import Commit, DecodeConfig, StepView


def _policies(specs: Any) -> tuple[Any, ...]:
    if isinstance(specs, (str, tuple)) or not hasattr(specs, "__iter__"):
        specs = [specs]
    policies = tuple(create("policies", spec) for spec in specs)
    if not policies:
        raise ValueError("policies must name at least one policy")
    return policies


@frozen(kw_only=True)
class UnionPolicy:
    """Commit every position that any member policy commits (``a + b`` in a spec).

    Learn2PD unites its filter with the schedule's top-k this way (arXiv 2509.25188).
    """

    policies: tuple[Any, ...] = field(converter=_policies)

    @property
    def reach(self) -> str:
        """The union commits past the block (reach "canvas") if any member does."""
        return "canvas" if any(getattr(p, "reach", "block") == "canvas" for p in self.policies) else "block"

    def requirements(self) -> set[str]:
        """What any member needs of the application (``unmask.core.needs``)."""
        return set().union(*(requirements(policy) for policy in self.policies))

    def provide(self, **values: Any) -> UnionPolicy:
        return UnionPolicy(policies=[
            policy.provide(**{name: values[name] for name in requirements(policy)}) if requirements(policy)
            else policy for policy in self.policies])

    @property
    def artefact_sha256(self) -> str | None:
        digests = [artefact_sha256(policy) for policy in self.policies]
        return None if not any(digests) else "+".join(digest or "-" for digest in digests)

    def check_config(self, config: DecodeConfig) -> None:
        check_config(self.policies, config)

    def select(self, view: StepView) -> torch.Tensor | Commit:
        decisions = [policy.select(view) for policy in self.policies]
        masks = [d.mask if isinstance(d, Commit) else d for d in decisions]
        commit = torch.stack(masks).any(0)
        if not any(isinstance(d, Commit) for d in decisions):
            return commit
        tokens = view.x0
        for decision in reversed(decisions):  # earlier members win where they disagree
            if isinstance(decision, Commit):
                tokens = torch.where(decision.mask, decision.tokens, tokens)
        return Commit(mask=commit, tokens=tokens)
