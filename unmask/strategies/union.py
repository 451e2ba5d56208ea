from __future__ import annotations

from typing import Any

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.engine import check_config
from unmask.core.needs import artefact_sha256, provide, requirements
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
class UnionPolicy(Component):
    """Commit every position that any member policy commits (``a + b`` in a spec).

    Learn2PD unites its filter with the schedule's top-k this way (arXiv 2509.25188).
    """

    policies: tuple[Any, ...] = field(converter=_policies)

    @property
    def reach(self) -> str:
        """The union commits past the block (reach "canvas") if any member does."""
        return "canvas" if any(p.reach == "canvas" for p in self.policies) else "block"

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """Whether any member draws from the decode's random stream."""
        return any(p.stochastic for p in self.policies)

    @property
    def reads_clock(self) -> bool:  # type: ignore[override]
        """Whether any member reads the decode's clock."""
        return any(p.reads_clock for p in self.policies)

    def requirements(self) -> set[str]:
        """What any member needs of the application (``unmask.core.needs``)."""
        return set().union(*(requirements(policy) for policy in self.policies))

    def provide(self, **values: Any) -> UnionPolicy:
        """Each member given what it needs (``unmask.core.needs.provide``)."""
        return UnionPolicy(policies=[provide(policy, {name: (lambda v=value: v) for name, value in values.items()})
                                     for policy in self.policies])

    @property
    def artefact_sha256(self) -> str | None:
        digests = [artefact_sha256(policy) for policy in self.policies]
        return None if not any(digests) else "+".join(digest or "-" for digest in digests)

    def check_config(self, config: DecodeConfig) -> None:
        check_config(self.policies, config)

    def select(self, view: StepView) -> Commit:
        """Every field united: a position any member fills, re-masks or edits; its token is the prediction
        unless a member writes another (an oracle's reference), the earlier member's where several do. A
        member's ``evaluated`` candidate holds for a row only where the union's decision on that row is that
        member's own (otherwise the canvas is not the candidate)."""
        decisions = [policy.select(view) for policy in self.policies]
        mask = torch.stack([d.mask for d in decisions]).any(0)
        written = [d.mask | (d.edit if d.edit is not None else False) for d in decisions]
        tokens = view.x0
        for decision, where in zip(reversed(decisions), reversed(written)):  # earlier members win
            tokens = torch.where(where & (decision.tokens != view.x0), decision.tokens, tokens)
        remask = _any([d.remask for d in decisions])
        edit = _any([d.edit for d in decisions])
        evaluated = None
        for decision in decisions:
            if decision.evaluated is None:
                continue
            same = (decision.mask == mask).all(1) & ((tokens == decision.tokens) | ~mask).all(1)
            same &= _rows_equal(decision.remask, remask) & _rows_equal(decision.edit, edit)
            own = torch.where(same, decision.evaluated, -1)
            evaluated = own if evaluated is None else torch.where(evaluated >= 0, evaluated, own)
        return Commit(mask=mask, tokens=tokens, remask=remask, edit=edit, evaluated=evaluated)


def _any(masks: list[torch.Tensor | None]) -> torch.Tensor | None:
    given = [m for m in masks if m is not None]
    return torch.stack(given).any(0) if given else None


def _rows_equal(mine: torch.Tensor | None, union: torch.Tensor | None) -> torch.Tensor | bool:
    """(B,) whether a member's optional mask equals the union's on each row (absent: no position)."""
    if union is None:
        return True
    return (union == (mine if mine is not None else torch.zeros_like(union))).all(1)
