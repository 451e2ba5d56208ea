"""Structured output: constraints that keep every answer completable (``unmask.core.types.Constraint``).

``regex`` and ``json_schema`` follow "Constrained Decoding of Diffusion LLMs with Context-Free Grammars"
(Mündler, Dekoninck, Vechev 2025, arXiv 2508.10111) with one change: a hole is exactly one token, not any
string, so a canvas passes only if its holes can be filled with the tokens that remain. The language is
compiled into a token-level automaton over the model's vocabulary (outlines-core); a row's answer is
scanned forward (the states its committed tokens and holes can reach) and backward (the states from which
the rest can still end in an accepting state), and a token may go in a hole iff it leads from a forward
state to a backward one. Exact for regular languages; a JSON Schema is regular up to outlines-core's bounded
nesting. Cost per step: O(answer length x automaton states) set operations per row, and one pass over each
reachable state's token transitions per position the policy may commit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from unmask.core.types import StepView, Vocabulary

__all__ = ["RegexConstraint", "JsonSchemaConstraint", "DistinctItemsConstraint"]


def _outlines_core() -> Any:
    try:
        import outlines_core
    except ImportError as error:
        raise ImportError("the regex and json_schema constraints need outlines-core: pip install "
                          "'unmask[constraints]'") from error
    return outlines_core


def _literal(text: str) -> str:
    return "".join(f"\\x{ord(char):02x}" if ord(char) < 128 else char for char in text)


class _Automaton:
    """A regular language over token ids: states 0..Q-1, END = Q (the answer ended with EOS)."""

    def __init__(self, pattern: str, vocabulary: Vocabulary) -> None:
        outlines_core = _outlines_core()
        by_text: dict[str, list[int]] = {}
        for token, text in enumerate(vocabulary.strings):
            if text and token != vocabulary.eos_token_id:
                by_text.setdefault(text, []).append(token)
        # outlines-core refuses a language with a state no token leaves; one-character stand-ins with ids past
        # the vocabulary satisfy it, and their transitions are dropped below (no token of the model is one).
        size = len(vocabulary.strings)
        for stand_in, char in enumerate(sorted(set(map(chr, range(32, 127))) | set("\n\t") | set(pattern))):
            by_text.setdefault(char, []).append(size + stand_in)
        try:
            # The tokens' strings joined begin with what the tokenizer drops from a decoded answer.
            index = outlines_core.Index(_literal(vocabulary.prefix) + f"(?:{pattern})",
                                        outlines_core.Vocabulary(vocabulary.eos_token_id, by_text))
        except (ValueError, RuntimeError) as error:  # outlines-core reports bad patterns as ValueError
            raise ValueError(f"pattern={pattern!r}: {' '.join(str(error).split())}") from None
        transitions = index.get_transitions()
        states = sorted(set(transitions) | {index.get_initial_state()} | set(index.get_final_states()))
        number = {state: i for i, state in enumerate(states)}
        self.end = len(states)
        self.start = number[index.get_initial_state()]
        self.final = {number[state] for state in index.get_final_states()}
        self.eos = vocabulary.eos_token_id
        self.moves: list[dict[int, int]] = [{} for _ in states]  # state -> {token: next state}
        for state, moves in transitions.items():
            self.moves[number[state]] = {token: number[target] for token, target in moves.items()
                                         if token != self.eos and token < size}
        self.tokens = [torch.tensor(list(m), dtype=torch.long) for m in self.moves]
        self.targets = [torch.tensor(list(m.values()), dtype=torch.long) for m in self.moves]
        self.successors = [set(m.values()) for m in self.moves]

    def _step(self, states: set[int], token: int, mask: int) -> set[int]:
        ended = self.end in states or bool(states & self.final)
        if token == mask:
            after = set().union(*(self.successors[q] for q in states if q != self.end))
            return after | {self.end} if ended else after
        if token == self.eos:
            return {self.end} if ended else set()
        return {self.moves[q][token] for q in states if q != self.end and token in self.moves[q]}

    def forward(self, answer: list[int], mask: int) -> list[set[int]]:
        """S_0 .. S_G: the states the answer's first i tokens (holes: any token or EOS) can reach."""
        sets = [{self.start}]
        for token in answer:
            sets.append(self._step(sets[-1], token, mask))
        return sets

    def backward(self, answer: list[int], mask: int) -> list[set[int]]:
        """B_0 .. B_G: the states from which the answer's tokens from i on can end accepted."""
        sets = [self.final | {self.end}]
        everything = range(self.end + 1)
        for token in reversed(answer):
            later = sets[-1]
            sets.append({q for q in everything if self._step({q}, token, mask) & later})
        return sets[::-1]

    def completable(self, answer: list[int], mask: int) -> bool:
        return bool(self.forward(answer, mask)[-1] & (self.final | {self.end}))

    def allowed(self, before: set[int], after: set[int], size: int) -> torch.Tensor:
        """(V,) bool: tokens leading from a state of ``before`` to one of ``after`` (EOS included)."""
        allowed = torch.zeros(size, dtype=torch.bool)
        targets = torch.zeros(self.end + 1, dtype=torch.bool)
        targets[list(after)] = True
        for q in before:
            if q != self.end and len(self.tokens[q]):
                allowed[self.tokens[q][targets[self.targets[q]]]] = True
        if self.end in after and (self.end in before or before & self.final):
            allowed[self.eos] = True
        return allowed


class _SequentialRefusal:
    """``refuse`` for constraints with a per-row completability test: the row's commits are taken in order
    of confidence, and one that would leave no completion with those before it is refused."""

    def refuse(self, view: StepView, commit: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        refused = torch.zeros_like(commit)
        for row in commit.any(1).nonzero().flatten().tolist():
            columns = commit[row].nonzero().flatten()
            order = columns[view.confidence[row, columns].argsort(descending=True, stable=True)].tolist()
            answer = view.x[row, view.gen_start:].tolist()
            for column in order:
                trial = list(answer)
                trial[column - view.gen_start] = int(tokens[row, column])
                if self._fits(view, trial):
                    answer = trial
                else:
                    refused[row, column] = True
        return refused


class RegexConstraint(_SequentialRefusal):
    """Answers that match a regular expression (Python ``re`` syntax, as outlines-core reads it), whole:
    ``regex:pattern='[a-z]+( [a-z]+)*'``. The answer is its text before the first EOS, as the tokenizer
    decodes it.

    After Mündler, Dekoninck and Vechev 2025 (arXiv 2508.10111), with holes counted exactly."""

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern must be a non-empty regular expression, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"pattern={pattern!r} is not a regular expression: {error}") from None
        self.pattern = pattern
        self._automata: dict[int, _Automaton] = {}
        self._automaton: _Automaton | None = None

    def prepare(self, vocabulary: Vocabulary, gen_start: int) -> None:
        key = id(vocabulary)  # vocabularies are cached per tokenizer: one automaton each
        if key not in self._automata:
            self._automata = {key: _Automaton(self.pattern, vocabulary)}
        self._automaton = self._automata[key]
        self._size = len(vocabulary.strings)

    def allowed(self, view: StepView, positions: torch.Tensor) -> torch.Tensor:
        automaton = self._prepared()
        allowed = torch.zeros((len(positions), self._size), dtype=torch.bool)
        for row in positions[:, 0].unique().tolist():
            answer = view.x[row, view.gen_start:].tolist()
            before = automaton.forward(answer, view.mask_token_id)
            after = automaton.backward(answer, view.mask_token_id)
            for i in (positions[:, 0] == row).nonzero().flatten().tolist():
                at = int(positions[i, 1]) - view.gen_start
                allowed[i] = automaton.allowed(before[at], after[at + 1], self._size)
        return allowed

    def _fits(self, view: StepView, answer: list[int]) -> bool:
        return self._prepared().completable(answer, view.mask_token_id)

    def _prepared(self) -> _Automaton:
        if self._automaton is None:
            raise RuntimeError("the constraint was used before prepare()")
        return self._automaton


class JsonSchemaConstraint(RegexConstraint):
    """JSON matching a JSON Schema (a file: ``json_schema:schema=PATH``), through outlines-core's schema ->
    regular expression (recursive schemas are unrolled to its bounded depth).

    After Mündler, Dekoninck and Vechev 2025 (arXiv 2508.10111), with holes counted exactly."""

    def __init__(self, schema: str) -> None:
        path = Path(str(schema))
        try:
            text = path.read_text(encoding="utf-8")
            json.loads(text)
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"schema={schema!r}: cannot read it ({error.__class__.__name__})") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"schema={schema!r} is not JSON: {error}") from None
        try:
            pattern = _outlines_core().json_schema.build_regex_from_schema(text)
        except (ValueError, RuntimeError, TypeError) as error:
            raise ValueError(f"schema={schema!r}: {' '.join(str(error).split())}") from None
        super().__init__(pattern)
        self.schema = str(schema)


class DistinctItemsConstraint(_SequentialRefusal):
    """No item twice within a group of the answer: ``distinct_items`` (the list tasks: a repeated name is how
    parallel commits most often break a shuffle). Items are tokens whose text is not blank nor ``separator``;
    the separator's tokens (``/`` by default: a Latin square's rows) and EOS end a group, blank tokens lie
    inside one. A hole between two equal items could still hold a separator, so an item is refused only where
    it would join a run of committed items (no hole between) holding its twin, or join two runs that share
    an item: a valid completion is never ruled out.

    Source: unmask (for the parallelism testbed's list tasks)."""

    def __init__(self, separator: str = "/") -> None:
        if not isinstance(separator, str):
            raise ValueError(f"separator must be a string, got {separator!r}")
        self.separator = separator.strip()

    def prepare(self, vocabulary: Vocabulary, gen_start: int) -> None:
        keys = [text.strip() for text in vocabulary.strings]
        self._key = keys  # token -> its item ("" for non-items)
        self._item = [bool(key) and key != self.separator for key in keys]
        # Blank tokens (a lone word-start mark) lie inside a group; a separator or EOS ends it.
        self._blank = [not key and token != vocabulary.eos_token_id for token, key in enumerate(keys)]
        self._joining = torch.tensor(self._item) | torch.tensor(self._blank)  # what would join two runs
        by_key: dict[str, list[int]] = {}
        for token, key in enumerate(keys):
            if self._item[token]:
                by_key.setdefault(key, []).append(token)
        self._same = {key: torch.tensor(tokens) for key, tokens in by_key.items()}
        self._size = len(keys)

    def _runs(self, answer: list[int], at: int, mask: int) -> tuple[list[str], list[str]]:
        """The committed items left and right of ``at`` up to a hole or non-item: an item placed at ``at`` joins
        them into one run, certainly one group."""
        runs: list[list[str]] = []
        for direction in (-1, 1):
            run, i = [], at + direction
            while 0 <= i < len(answer) and answer[i] != mask and answer[i] < self._size and (
                    self._item[answer[i]] or self._blank[answer[i]]):
                if self._item[answer[i]]:
                    run.append(self._key[answer[i]])
                i += direction
            runs.append(run)
        return runs[0], runs[1]

    def _banned(self, answer: list[int], at: int, mask: int) -> set[str] | None:
        """The items that cannot go at ``at``; None: no item nor blank can (its two runs share one)."""
        left, right = self._runs(answer, at, mask)
        return None if set(left) & set(right) else set(left) | set(right)

    def allowed(self, view: StepView, positions: torch.Tensor) -> torch.Tensor:
        allowed = torch.ones((len(positions), self._size), dtype=torch.bool)
        for i, (row, column) in enumerate(positions.tolist()):
            banned = self._banned(view.x[row, view.gen_start:].tolist(), column - view.gen_start, view.mask_token_id)
            if banned is None:
                allowed[i, self._joining] = False
            for key in banned or ():
                allowed[i, self._same[key]] = False
        return allowed

    def _fits(self, view: StepView, answer: list[int]) -> bool:
        """No run of committed items holds one twice."""
        mask, run = view.mask_token_id, set()
        for token in answer:
            if token != mask and token < self._size and self._item[token]:
                if self._key[token] in run:
                    return False
                run.add(self._key[token])
            elif token == mask or token >= self._size or not self._blank[token]:
                run = set()
        return True