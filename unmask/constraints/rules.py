"""A grammar's rules as small minimal automata over symbols, the form the grammar constraint runs them in
(``unmask.constraints.grammar``): the rules' shared beginnings and their first and later list items end in
the same states, so a stack of return places stays short and the constraint's automaton small."""

from __future__ import annotations

from collections import defaultdict

__all__ = ["Rules", "Automaton"]


class Rules:
    """The grammar as one small deterministic automaton per rule over symbols (terminals, and calls of other
    rules), each minimised: a rule's states are the places it can return to, so the first and the later
    items of a list return to the same state and a nesting level costs one frame, whichever item it is in.

    A rule's references to itself at the start or the end of an alternative are loops, not calls (lark writes
    ``y+`` as ``x: x y | y``); lark's helper rules (named ``__...``) are inlined where they do not recurse
    through other helpers, so only the grammar's own rules are called."""

    def __init__(self, rules: list[tuple[str, tuple[str, ...]]], terminals: set[str], start: str) -> None:
        self.terminals = terminals
        self.expansions: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        for origin, expansion in rules:
            if expansion not in self.expansions[origin]:
                self.expansions[origin].append(expansion)
        missing = {s for e in self.expansions.values() for x in e for s in x
                   if s not in terminals and s not in self.expansions}
        if missing or start not in self.expansions:
            raise ValueError(f"grammar: no rule for {', '.join(sorted(missing or {start}))}")
        self.inlined = self._inlinable()
        self.start = start
        # rule -> (start state, final states, moves: state -> {symbol: state})
        self.automata = {name: _minimal(*self._nfa(name)) for name in self.expansions if name not in self.inlined}

    def _inlinable(self) -> set[str]:
        """Helpers whose inlining ends: none reaches itself through other helpers."""
        helpers = {name for name in self.expansions if name.startswith("__")}
        inlined: set[str] = set()
        for name in sorted(helpers):
            reach, work = set(), [name]
            while work:
                current = work.pop()
                for expansion in self.expansions[current]:
                    for i, symbol in enumerate(expansion):
                        looping = symbol == current and i in (0, len(expansion) - 1)
                        if symbol in helpers and symbol not in reach and not looping:
                            reach.add(symbol)
                            work.append(symbol)
            if name not in reach:
                inlined.add(name)
        return inlined

    def _nfa(self, name: str) -> tuple[int, int, list[list[tuple[str | None, int]]]]:
        edges: list[list[tuple[str | None, int]]] = []

        def state() -> int:
            edges.append([])
            return len(edges) - 1

        def rule(rule_name: str, begin: int, end: int) -> None:
            """rule_name = heads* bases tails*, between ``begin`` and ``end``."""
            heads, bases, tails = [], [], []
            for expansion in self.expansions[rule_name]:
                if expansion[:1] == (rule_name,) and len(expansion) > 1:
                    tails.append(expansion[1:])
                elif expansion[-1:] == (rule_name,) and len(expansion) > 1:
                    heads.append(expansion[:-1])
                elif expansion != (rule_name,):
                    bases.append(expansion)
            before, after = state(), state()
            edges[begin].append((None, before))
            edges[after].append((None, end))
            for loop_at, loops in ((before, heads), (after, tails)):
                for expansion in loops:
                    sequence(expansion, loop_at, loop_at)
            for expansion in bases:
                sequence(expansion, before, after)

        def sequence(symbols: tuple[str, ...], begin: int, end: int) -> None:
            if not symbols:
                edges[begin].append((None, end))
            at = begin
            for i, symbol in enumerate(symbols):
                following = end if i == len(symbols) - 1 else state()
                if symbol in self.inlined:
                    rule(symbol, at, following)
                else:
                    edges[at].append((symbol, following))
                at = following

        begin, end = state(), state()
        rule(name, begin, end)
        return begin, end, edges


Automaton = tuple[int, frozenset[int], list[dict[str, int]]]


def _minimal(begin: int, end: int, edges: list[list[tuple[str | None, int]]]) -> Automaton:
    """The minimal deterministic automaton of an NFA with empty moves (label None): the subset construction,
    then Moore's partition refinement."""
    def closure(states: frozenset[int]) -> frozenset[int]:
        seen, work = set(states), list(states)
        while work:
            for label, target in edges[work.pop()]:
                if label is None and target not in seen:
                    seen.add(target)
                    work.append(target)
        return frozenset(seen)

    subsets = [closure(frozenset((begin,)))]
    number = {subsets[0]: 0}
    moves: list[dict[str, int]] = []
    for subset in subsets:  # grows while it is walked
        targets: dict[str, set[int]] = defaultdict(set)
        for q in subset:
            for label, target in edges[q]:
                if label is not None:
                    targets[label].add(target)
        out = {}
        for label, group in targets.items():
            following = closure(frozenset(group))
            if following not in number:
                number[following] = len(subsets)
                subsets.append(following)
            out[label] = number[following]
        moves.append(out)
    final = [end in subset for subset in subsets]
    block = [int(f) for f in final]
    while True:
        signature = [(block[q], tuple(sorted((label, block[t]) for label, t in moves[q].items())))
                     for q in range(len(subsets))]
        renumber = {sig: i for i, sig in enumerate(dict.fromkeys(signature))}
        refined = [renumber[sig] for sig in signature]
        if len(renumber) == len(set(block)):
            break
        block = refined
    table: list[dict[str, int]] = [{} for _ in renumber]
    for q in range(len(subsets)):
        table[refined[q]] = {label: refined[t] for label, t in moves[q].items()}
    return refined[0], frozenset(refined[q] for q in range(len(subsets)) if final[q]), table
