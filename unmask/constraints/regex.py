"""Structured output: constraints that keep every answer completable (``unmask.core.types.Constraint``).

``regex`` and ``json_schema`` follow "Constrained Decoding of Diffusion LLMs with Context-Free Grammars"
(Mündler, Dekoninck, Vechev 2025, arXiv 2508.10111) with one change: a hole is exactly one token, not any
string, so a canvas passes only if its holes can be filled with the tokens that remain. outlines-core
compiles the language into the token automaton that ``unmask.constraints.automaton`` scans. Exact for
regular languages; a JSON Schema is regular up to outlines-core's bounded nesting.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from unmask.constraints.automaton import AutomatonConstraint, TokenAutomaton
from unmask.core.types import Vocabulary

__all__ = ["RegexConstraint", "JsonSchemaConstraint"]


def _outlines_core() -> Any:
    try:
        import outlines_core
    except ImportError as error:
        raise ImportError("the regex and json_schema constraints need outlines-core: pip install "
                          "'unmask[constraints]'") from error
    return outlines_core


def _literal(text: str) -> str:
    return "".join(f"\\x{ord(char):02x}" if ord(char) < 128 else char for char in text)


# Characters outlines-core is given as stand-in tokens (beside the vocabulary's): it refuses a language with a
# state no token leaves.
STAND_INS = frozenset(map(chr, range(32, 127))) | {"\n", "\t"}


def refuses_recursion(message: str) -> bool:
    """Whether outlines-core refused a JSON Schema for its recursion (it spells it "recusion")."""
    return "recusion" in message or "recursion" in message


# outlines-core 0.2.14's index drops a transition from an accepting state into a state that does not accept
# ("1(a1)?" loses the "a" after "1"). So the pattern is compiled followed by an end mark that no text holds,
# the mark alone accepts, and the states the mark leaves from are the accepting ones.
END_MARK = "\x00"


def indexed(pattern: str, texts: dict[str, list[int]], stand_in: int, eos: int) -> tuple[Any, list[dict[int, int]],
                                                                                         set[int]]:
    """outlines-core's automaton of ``pattern`` over tokens ``texts`` (text -> ids), the end mark given the id
    ``stand_in``: (initial state, moves per state as {token: state} with states numbered 0.., accepting states)."""
    outlines_core = _outlines_core()
    texts = {**texts, END_MARK: [stand_in]}
    try:
        index = outlines_core.Index(f"(?:{pattern}){_literal(END_MARK)}", outlines_core.Vocabulary(eos, texts))
    except (ValueError, RuntimeError) as error:  # outlines-core reports bad patterns as ValueError
        raise ValueError(f"pattern={pattern!r}: {' '.join(str(error).split())}") from None
    transitions = index.get_transitions()
    states = sorted(set(transitions) | {index.get_initial_state()})
    number = {state: i for i, state in enumerate(states)}
    moves: list[dict[int, int]] = [{} for _ in states]
    final = set()
    for state, out in transitions.items():
        if stand_in in out:
            final.add(number[state])
        moves[number[state]] = {token: number[target] for token, target in out.items()
                                if token not in (eos, stand_in)}
    return number[index.get_initial_state()], moves, final


def pattern_automaton(pattern: str, vocabulary: Vocabulary) -> TokenAutomaton:
    """The token automaton of a regular expression (outlines-core's index over the vocabulary)."""
    by_text: dict[str, list[int]] = {}
    for token, text in enumerate(vocabulary.strings):
        if text and token != vocabulary.eos_token_id and END_MARK not in text:
            by_text.setdefault(text, []).append(token)
    # outlines-core refuses a language with a state no token leaves; one-character stand-ins with ids past
    # the vocabulary satisfy it, and their transitions are dropped below (no token of the model is one).
    size = len(vocabulary.strings)
    for stand_in, char in enumerate(sorted(STAND_INS | set(pattern))):
        by_text.setdefault(char, []).append(size + 1 + stand_in)
    # The tokens' strings joined begin with what the tokenizer drops from a decoded answer.
    start, moves, final = indexed(_literal(vocabulary.prefix) + f"(?:{pattern})", by_text, size,
                                  vocabulary.eos_token_id)
    moves = [{token: target for token, target in out.items() if token < size} for out in moves]
    return TokenAutomaton(start, final, moves, vocabulary.eos_token_id)


class RegexConstraint(AutomatonConstraint):
    """Answers that match a regular expression (Python ``re`` syntax, as outlines-core reads it), whole:
    ``regex:pattern='[a-z]+( [a-z]+)*'``. The answer is its text before the first EOS, as the tokenizer
    decodes it.

    After Mündler, Dekoninck and Vechev 2025 (arXiv 2508.10111), with holes counted exactly."""

    # String parameters a request to `unmask serve` may set: data, never a path (docs/serve.md).
    request_strings = {"pattern": "regex"}  # compiled under the server's budget first

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern must be a non-empty regular expression, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"pattern={pattern!r} is not a regular expression: {error}") from None
        self.pattern = pattern

    def _key(self) -> Any:
        return ("automaton", self.pattern)

    def _build(self, vocabulary: Vocabulary) -> TokenAutomaton:
        return pattern_automaton(self.pattern, vocabulary)


class JsonSchemaConstraint(AutomatonConstraint):
    """JSON matching a JSON Schema (a file: ``json_schema:schema=PATH``), through outlines-core's schema ->
    regular expression; a recursive schema that outlines-core refuses goes through the grammar route
    (``unmask.constraints.schema_grammar``), its nesting bounded by the grammar constraint's ``depth``.

    After Mündler, Dekoninck and Vechev 2025 (arXiv 2508.10111), with holes counted exactly."""

    # String parameters a request to `unmask serve` may set: data, never a path (docs/serve.md).
    request_strings: dict[str, str] = {}  # its schema is a file: requests give schemas inline (response_format)

    def __init__(self, schema: str) -> None:
        path = Path(str(schema))
        try:
            text = path.read_text(encoding="utf-8")
            parsed = json.loads(text)
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"schema={schema!r}: cannot read it ({error.__class__.__name__})") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"schema={schema!r} is not JSON: {error}") from None
        self.schema = str(schema)
        self.route: AutomatonConstraint = schema_route(parsed, f"schema={schema!r}")

    def _key(self) -> Any:
        return self.route._key()

    def _build(self, vocabulary: Vocabulary) -> TokenAutomaton:
        return self.route._build(vocabulary)


def schema_route(schema: Any, name: str) -> AutomatonConstraint:
    """The constraint of a JSON Schema: a regex where outlines-core writes one, else (recursion) a grammar."""
    try:
        return RegexConstraint(_outlines_core().json_schema.build_regex_from_schema(json.dumps(schema)))
    except (ValueError, RuntimeError, TypeError) as error:
        if not refuses_recursion(str(error)):
            raise ValueError(f"{name}: {' '.join(str(error).split())}") from None
    from unmask.constraints.grammar import GrammarConstraint
    from unmask.constraints.schema_grammar import schema_grammar

    return GrammarConstraint(schema_grammar(schema))
