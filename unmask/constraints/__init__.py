"""Built-in constraints (structured output), registered through the same hooks as any plug-in.

A constraint keeps every row's answer completable into a word of its language, within the positions that
remain (``unmask.core.types.Constraint``). Here: ``regex`` and ``json_schema`` (a regular language through
outlines-core's automaton, holes counted exactly), ``grammar`` (a context-free grammar in Lark's EBNF, nesting
bounded, compiled into the same kind of automaton) and ``distinct_items`` (lists whose items never repeat
within a group). The engine's side, the selection stage that a constraint wraps (banning tokens before the
predictions are scored, asking the policy again on refusals, ending closed answers), is
``unmask.core.selection`` with its helpers in ``unmask.core.constraints``.
"""

from __future__ import annotations

from unmask.constraints.distinct_items import DistinctItemsConstraint
from unmask.constraints.grammar import Grammar, GrammarConstraint
from unmask.constraints.regex import JsonSchemaConstraint, RegexConstraint
from unmask.core.plugins import Registrar, hookimpl

__all__ = ["RegexConstraint", "JsonSchemaConstraint", "GrammarConstraint", "Grammar", "DistinctItemsConstraint"]


@hookimpl
def unmask_register_constraints(registry: Registrar) -> None:
    registry.add("regex", RegexConstraint, example=lambda **_: RegexConstraint(pattern="[a-z ]+"))
    registry.add("json_schema", JsonSchemaConstraint)
    registry.add("grammar", GrammarConstraint, example=lambda **_: GrammarConstraint('start: "a" start? "b"'))
    registry.add("distinct_items", DistinctItemsConstraint)
