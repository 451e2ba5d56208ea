"""The token automaton shared by the constraints of regular languages (``regex``, ``json_schema``, ``grammar``).

A language is compiled into an automaton over the model's token ids. A row's answer is scanned forward (the
states its committed tokens and holes can reach) and backward (the states from which the rest can still end
in an accepting state); a hole is exactly one token (or the EOS that ends the answer), so a canvas passes only
if its holes can be filled with the tokens that remain, and a token may go in a hole iff it leads from a
forward state to a backward one. Cost per step: O(answer length x automaton states) set operations per row,
and one pass over each reachable state's token transitions per position the policy may commit.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch

from unmask.core.component import Component
from unmask.core.types import StepView, Vocabulary

__all__ = ["TokenAutomaton", "AutomatonConstraint", "derived"]


class TokenAutomaton:
    """A regular language over token ids: states 0..Q-1, END = Q (the answer ended with EOS)."""

    def __init__(self, start: int, final: set[int], moves: list[dict[int, int]], eos_token_id: int) -> None:
        """``moves[q]``: {token: next state} for states 0..Q-1 (EOS not among the tokens)."""
        self.end = len(moves)
        self.start, self.final, self.moves, self.eos = start, set(final), moves, eos_token_id
        self.successors = [frozenset(m.values()) for m in self.moves]
        self.predecessors: list[set[int]] = [set() for _ in range(self.end + 1)]
        for state, targets in enumerate(self.successors):
            for target in targets:
                self.predecessors[target].add(state)
        # Every transition as flat (source, token, target) tensors: the tokens a hole may take come from one
        # vectorised pass over them.
        triples = [(q, token, target) for q, moves in enumerate(self.moves) for token, target in moves.items()]
        self.sources, self.tokens, self.targets = (torch.tensor(column, dtype=torch.long).reshape(-1)
                                                   for column in (zip(*triples) if triples else ((), (), ())))
        self.ending = frozenset(self.final | {self.end})  # states an EOS may follow
        # Canvases repeat the same state sets (runs of holes saturate), so steps and allowed tokens are
        # memoised; the (V,) masks in a memo of their own, kept small.
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._masks: dict[tuple[Any, ...], Any] = {}

    @staticmethod
    def _remember(memo: dict[tuple[Any, ...], Any], key: tuple[Any, ...], compute: Any, size: int = 50_000) -> Any:
        if key not in memo:
            if len(memo) >= size:
                memo.clear()
            memo[key] = compute()
        return memo[key]

    def _step(self, states: frozenset[int], token: int, mask: int) -> frozenset[int]:
        """The states after ``token`` (a hole: any token, or EOS) from any of ``states``."""
        if token == mask:
            return self._remember(self._memo, ("hole", states), lambda: frozenset().union(
                *(self.successors[q] for q in states if q != self.end),
                (self.end,) if states & self.ending else ()))
        if token == self.eos:
            return frozenset((self.end,)) if states & self.ending else frozenset()
        return frozenset(self.moves[q][token] for q in states if q != self.end and token in self.moves[q])

    def _back(self, later: frozenset[int], token: int, mask: int) -> frozenset[int]:
        """The states from which ``token`` (a hole: any token, or EOS) leads into ``later``."""
        ended = self.ending if self.end in later else frozenset()
        if token == self.eos:
            return ended
        if token == mask:
            return self._remember(self._memo, ("back", later), lambda: frozenset().union(
                *(self.predecessors[q] for q in later if q != self.end), ended))
        inverse = self._remember(self._memo, ("inverse", token), lambda: self._inverse(token))
        # Sets after runs of holes hold most states, and the canvas right of a step's commits is as it was:
        # remembered, and walked from whichever side is smaller.
        return self._remember(self._memo, ("back", token, later), lambda: frozenset().union(
            *(inverse[q] for q in (inverse.keys() & later if len(inverse) < len(later) else
                                   (q for q in later if q in inverse)))))

    def _inverse(self, token: int) -> dict[int, set[int]]:
        sources: dict[int, set[int]] = {}
        for q, moves in enumerate(self.moves):
            if token in moves:
                sources.setdefault(moves[token], set()).add(q)
        return sources

    def forward(self, answer: list[int], mask: int) -> list[frozenset[int]]:
        """S_0 .. S_G: the states the answer's first i tokens (holes: any token or EOS) can reach."""
        sets = [frozenset((self.start,))]
        for token in answer:
            sets.append(self._step(sets[-1], token, mask))
        return sets

    def backward(self, answer: list[int], mask: int) -> list[frozenset[int]]:
        """B_0 .. B_G: the states from which the answer's tokens from i on can end accepted."""
        sets = [self.ending]
        for token in reversed(answer):
            sets.append(self._back(sets[-1], token, mask))
        return sets[::-1]

    def completable(self, answer: list[int], mask: int) -> bool:
        return bool(self.forward(answer, mask)[-1] & self.ending)

    def allowed(self, before: frozenset[int], after: frozenset[int], size: int) -> torch.Tensor:
        """(V,) bool, read-only: tokens leading from a state of ``before`` to one of ``after`` (EOS included)."""
        return self._remember(self._masks, (before, after, size), lambda: self._allowed(before, after, size), 256)

    def _allowed(self, before: frozenset[int], after: frozenset[int], size: int) -> torch.Tensor:
        allowed = torch.zeros(size, dtype=torch.bool)
        into, out_of = torch.zeros(self.end + 1, dtype=torch.bool), torch.zeros(self.end + 1, dtype=torch.bool)
        out_of[list(before)], into[list(after)] = True, True
        allowed[self.tokens[out_of[self.sources] & into[self.targets]]] = True
        if self.end in after and before & self.ending:
            allowed[self.eos] = True
        return allowed


class _SequentialRefusal(Component):
    """``refuse`` for constraints with a per-row completability test: the row's commits are taken in order
    of confidence, and one that would leave no completion with those before it is refused."""

    def refuse(self, view: StepView, commit: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        refused = torch.zeros_like(commit)
        starts = view.answer_starts.tolist()
        for row in commit.any(1).nonzero().flatten().tolist():
            columns = commit[row].nonzero().flatten()
            order = columns[view.confidence[row, columns].argsort(descending=True, stable=True)].tolist()
            answer = view.x[row, starts[row]:].tolist()
            for column in order:
                trial = list(answer)
                trial[column - starts[row]] = int(tokens[row, column])
                if self._fits(view, row, trial):
                    answer = trial
                else:
                    refused[row, column] = True
        return refused


class AutomatonConstraint(_SequentialRefusal):
    """A constraint whose language is a :class:`TokenAutomaton`; a subclass says how to build it for a
    vocabulary (``_build``) and under which key it is remembered (``_key``)."""

    _automaton: TokenAutomaton | None = None

    def _build(self, vocabulary: Vocabulary) -> TokenAutomaton:
        raise NotImplementedError

    def _key(self) -> Any:
        raise NotImplementedError

    def prepare(self, vocabulary: Vocabulary, gen_start: int) -> None:
        self._automaton = derived(vocabulary, self._key(), lambda: self._build(vocabulary))
        self._size = len(vocabulary.strings)

    def allowed(self, view: StepView, positions: torch.Tensor) -> torch.Tensor:
        automaton = self._prepared()
        allowed = torch.zeros((len(positions), self._size), dtype=torch.bool)
        starts = view.answer_starts.tolist()
        for row in positions[:, 0].unique().tolist():
            answer = view.x[row, starts[row]:].tolist()
            before = automaton.forward(answer, view.mask_token_id)
            after = automaton.backward(answer, view.mask_token_id)
            for i in (positions[:, 0] == row).nonzero().flatten().tolist():
                at = int(positions[i, 1]) - starts[row]
                allowed[i] = automaton.allowed(before[at], after[at + 1], self._size)
        return allowed

    def _fits(self, view: StepView, row: int, answer: list[int]) -> bool:
        return self._prepared().completable(answer, view.mask_token_id)

    def _prepared(self) -> TokenAutomaton:
        if self._automaton is None:
            raise RuntimeError("the constraint was used before prepare()")
        return self._automaton


# What a constraint derives from a vocabulary outlives one decode: an automaton over a large vocabulary takes
# seconds to build, and a server or a grid decodes the same pattern again and again. Vocabularies are cached
# per tokenizer, so (id, what) is a key while the weak reference still points at the same vocabulary.
_DERIVED: dict[tuple[int, Any], tuple["weakref.ref[Vocabulary]", Any]] = {}
MAX_DERIVED = 16


def derived(vocabulary: Vocabulary, what: Any, build: Callable[[], Any]) -> Any:
    """``build()``, remembered for this vocabulary under the hashable key ``what``."""
    key = (id(vocabulary), what)
    held = _DERIVED.get(key)
    if held is None or held[0]() is not vocabulary:
        if len(_DERIVED) >= MAX_DERIVED:
            _DERIVED.clear()
        held = _DERIVED[key] = (weakref.ref(vocabulary), build())
    return held[1]
