"""``distinct_items``: the list tasks' constraint (a repeated name is how parallel commits most often break a
shuffle or a Latin square), and with ``permutation_of_prompt`` the exact "each group is a permutation of the
prompt's items"."""

from __future__ import annotations

import torch

from unmask.core.types import StepView, Vocabulary
from unmask.constraints.automaton import _SequentialRefusal, derived

__all__ = ["DistinctItemsConstraint"]


class _Tables:
    """What ``distinct_items`` reads of a vocabulary, built once per vocabulary and separator."""

    def __init__(self, vocabulary: Vocabulary, separator: str) -> None:
        self.key = [text.strip() for text in vocabulary.strings]  # token -> its item ("" for non-items)
        self.item = [bool(key) and key != separator for key in self.key]
        # Blank tokens (a lone word-start mark) lie inside a group; a separator or EOS ends it.
        self.blank = [not key and token != vocabulary.eos_token_id for token, key in enumerate(self.key)]
        self.joining = torch.tensor(self.item) | torch.tensor(self.blank)  # what would join two runs
        by_key: dict[str, list[int]] = {}
        for token, key in enumerate(self.key):
            if self.item[token]:
                by_key.setdefault(key, []).append(token)
        self.same = {key: torch.tensor(tokens) for key, tokens in by_key.items()}
        self.separators = torch.tensor([key == separator for key in self.key])
        self.has_separator = bool(self.separators.any())


class DistinctItemsConstraint(_SequentialRefusal):
    """No item twice within a group of the answer. Items are tokens whose text is not blank nor ``separator``;
    the separator's tokens (``/`` by default: a Latin square's rows) and EOS end a group, blank tokens lie
    inside one. A hole between two equal items could still hold a separator, so an item is refused only where
    it would join a run of committed items (no hole between) holding its twin, or join two runs that share
    an item: sound (a valid completion is never ruled out), not exact.

    With ``permutation_of_prompt=true`` the answer is one or more groups, each a permutation of the prompt's
    n items (those after its last ``:``, or the whole prompt's), separated by ``separator`` and ended by EOS
    or the canvas's end; no blank tokens. Groups then have a fixed place (n items, then a separator or EOS),
    so the check is exact: a token may go in a hole iff some completion in the canvas's length has it.

    Source: unmask (for the parallelism testbed's list tasks)."""

    # String parameters a request to `unmask serve` may set: data, never a path (docs/serve.md).
    request_strings = {"separator": "text"}

    def __init__(self, separator: str = "/", permutation_of_prompt: bool = False) -> None:
        if not isinstance(separator, str) or not separator.strip():
            raise ValueError(f"separator must be a non-blank string, got {separator!r}")
        if not isinstance(permutation_of_prompt, bool):
            raise ValueError(f"permutation_of_prompt must be true or false, got {permutation_of_prompt!r}")
        self.separator = separator.strip()
        self.permutation_of_prompt = permutation_of_prompt

    def prepare(self, vocabulary: Vocabulary, gen_start: int) -> None:
        tables = derived(vocabulary, ("distinct_items", self.separator), lambda: _Tables(vocabulary, self.separator))
        self._key, self._item, self._blank, self._joining = tables.key, tables.item, tables.blank, tables.joining
        self._same, self._separators, self._has_separator = tables.same, tables.separators, tables.has_separator
        self._eos, self._size = vocabulary.eos_token_id, len(vocabulary.strings)

    def allowed(self, view: StepView, positions: torch.Tensor) -> torch.Tensor:
        allowed = torch.ones((len(positions), self._size), dtype=torch.bool)
        starts = view.answer_starts.tolist()
        rows = {row: (view.x[row, starts[row]:].tolist(), self._prompt_items(view, row))
                for row in positions[:, 0].unique().tolist()}  # once per row, not per position
        for i, (row, column) in enumerate(positions.tolist()):
            (answer, items), at = rows[row], column - starts[row]
            if items is not None:
                allowed[i] = self._permutation_allowed(answer, at, view.mask_token_id, items)
                continue
            banned = self._banned(answer, at, view.mask_token_id)
            if banned is None:
                allowed[i, self._joining] = False
            for key in banned or ():
                allowed[i, self._same[key]] = False
        return allowed

    def _fits(self, view: StepView, row: int, answer: list[int]) -> bool:
        items = self._prompt_items(view, row)
        if items is not None:
            return self._permutations_fit(answer, view.mask_token_id, items)
        mask, run = view.mask_token_id, set()  # no run of committed items holds one twice
        for token in answer:
            if token != mask and token < self._size and self._item[token]:
                if self._key[token] in run:
                    return False
                run.add(self._key[token])
            elif token == mask or token >= self._size or not self._blank[token]:
                run = set()
        return True

    # distinct items: runs of committed items

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

    # permutations of the prompt's items: groups of n items at fixed places

    def _prompt_items(self, view: StepView, row: int) -> frozenset[str] | None:
        if not self.permutation_of_prompt:
            return None
        prompt = [token for token in view.x[row, :int(view.answer_starts[row])].tolist() if token < self._size]
        colon = max((i for i, token in enumerate(prompt) if self._key[token].endswith(":")), default=-1)
        return frozenset(self._key[token] for token in prompt[colon + 1:] if self._item[token])

    def _permutations_fit(self, answer: list[int], mask: int, items: frozenset[str]) -> bool:
        """Whether the holes of ``answer`` can be filled into an answer of groups of ``items``: every n + 1-th
        place a separator, and an end (EOS at such a place, or the canvas's end) after whole groups; the
        tokens after the answer's end do not count."""
        period, seen, ends = len(items) + 1, [set() for _ in range(len(answer) // (len(items) + 1) + 1)], []
        for i, token in enumerate(answer):
            between = i % period == period - 1  # a separator's place
            if token == mask or token == self._eos:
                if between:
                    ends.append(i)
                if token == mask:
                    continue
                break
            if token >= self._size or (self._key[token] != self.separator if between else (
                    not self._item[token] or self._key[token] not in items or self._key[token] in seen[i // period])):
                break
            seen[i // period].add(self._key[token])
        else:
            if len(answer) % period == period - 1:
                ends.append(len(answer))
        # Without a separator token the answer is one group.
        return any(self._has_separator or end == period - 1 for end in ends)

    def _permutation_allowed(self, answer: list[int], at: int, mask: int, items: frozenset[str]) -> torch.Tensor:
        """(V,) the tokens some completion has at ``at``: each kind of token is tried once (which missing
        item goes there does not change whether the rest fits)."""
        allowed = torch.zeros(self._size, dtype=torch.bool)
        ended = next((i for i, token in enumerate(answer) if token == self._eos), None)
        if ended is not None and at > ended:  # the answer has ended: the engine cuts the row
            allowed[self._eos] = True
            return allowed
        period = len(items) + 1

        def fits(token: int) -> bool:
            trial = list(answer)
            trial[at] = token
            return self._permutations_fit(trial, mask, items)

        if fits(self._size):  # (an id no token has) the answer can end before ``at``: anything may follow
            allowed[:] = True
            return allowed
        if at % period == period - 1:
            separator = self._separators.nonzero().flatten()
            if len(separator) and fits(int(separator[0])):
                allowed |= self._separators
            allowed[self._eos] = fits(self._eos)
            return allowed
        start = at - at % period
        taken = {self._key[t] for t in answer[start:start + period - 1] if t != mask and t < self._size}
        missing = sorted(items - taken)
        if missing and fits(int(self._same[missing[0]][0])):
            for key in missing:
                allowed[self._same[key]] = True
        return allowed
