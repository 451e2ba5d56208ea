"""Context-free grammar constraints: every answer is a sentence of a grammar in Lark's EBNF, checked length-exactly.

After "Constrained Decoding of Diffusion LLMs with Context-Free Grammars" (Mündler, Dekoninck, Vechev 2025,
arXiv 2508.10111), with two changes. A hole is exactly one token, not any string: a canvas passes only if its
holes can be filled with the tokens that remain (the paper's `.*` gap lets a canvas pass that cannot be
finished in the positions left). And the grammar's nesting is bounded: a place a rule returns to may be
open at most ``depth`` times at once (JSON's arrays and objects each nested ``depth`` deep; lists of any
length, as a call with nothing after it takes no stack). A language whose nesting is bounded is regular,
so the grammar compiles into the token automaton of ``unmask.constraints.automaton`` and every check of the
regex constraint applies unchanged: the tokens allowed at each hole before the policy chooses, refusals
after, the answer closed at EOS. The constraint is exact for answers nested at most ``depth`` deep, and never
lets through a canvas that cannot be finished.

The work is split where a library fits: lark parses the grammar (EBNF, templates, imports, terminals as
regular expressions) into plain rules; outlines-core compiles each terminal's regular expression into an
automaton over characters; this module runs the rules as a stack machine whose stacks are bounded, over
characters (the subset construction, explored lazily from the start), then over the vocabulary's tokens
(each reached state walks a trie of the tokens' strings). The cost is bounded up front: a grammar whose
automaton grows past ``max_states`` is refused with an error naming ``depth`` (docs/constraints.md).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from unmask.constraints.automaton import AutomatonConstraint, TokenAutomaton
from unmask.constraints.regex import END_MARK, STAND_INS, _literal, indexed
from unmask.constraints.rules import Rules
from unmask.core.types import Vocabulary

__all__ = ["GrammarConstraint", "Grammar", "lark_parser", "DEFAULT_DEPTH", "DEFAULT_MAX_STATES"]

DEFAULT_DEPTH = 4
DEFAULT_MAX_STATES = 50_000

Frame = tuple[str, int]  # (rule, a state of its automaton)
Stack = tuple[Frame, ...]  # the current place last; below it, the places the rules called return to
Config = tuple[Stack, Any, Any]  # (stack, terminal being read or None between terminals, its automaton state)
_PREFIX = "<prefix>"  # a configuration reading the tokenizer's prefix: ((), _PREFIX, characters read)


def _lark() -> Any:
    try:
        import lark
    except ImportError as error:
        raise ImportError("the grammar constraint needs lark: pip install 'unmask[constraints]'") from error
    return lark


def lark_parser(text: str, start: str = "start") -> Any:
    """Lark's parser of the grammar's language as this constraint reads it: Earley with every way of splitting
    the text into terminals tried (``dynamic_complete``), so no longest-match rule of a lexer narrows it."""
    lark = _lark()
    try:
        return lark.Lark(text, start=start, parser="earley", lexer="dynamic_complete")
    except lark.exceptions.LarkError as error:
        raise ValueError(f"grammar: {' '.join(str(error).split())[:500]}") from None


class _Terminal:
    """A terminal's regular expression as an automaton over characters (outlines-core's index)."""

    def __init__(self, name: str, pattern: str, alphabet: list[str]) -> None:
        ids = {char: [i] for i, char in enumerate(alphabet)}
        try:
            self.start, moves, final = indexed(pattern, ids, len(alphabet), len(alphabet) + 1)
        except ValueError as error:
            raise ValueError(f"grammar: terminal {name}: {error}") from None
        self.final = frozenset(final)
        self.moves = [{alphabet[char]: target for char, target in out.items()} for out in moves]


class _CharAutomaton:
    """The grammar's language, nesting bounded by ``depth``, as a deterministic automaton over characters.

    A state is a set of configurations (a stack of places in the rules' automata, and the terminal being
    read with its state);
    states are numbered as they are first reached, and each state's move on a character is computed once."""

    def __init__(self, rules: Rules, terminals: dict[str, _Terminal], ignore: list[str], depth: int,
                 max_states: int, prefix: str = "") -> None:
        self.rules, self.terminals, self.ignore = rules, terminals, ignore
        self.depth, self.max_states = depth, max_states
        self._ready_memo: dict[Stack, frozenset[Stack]] = {}
        self._config_moves: dict[Config, dict[str, set[Config]]] = {}
        self.states: list[frozenset[Config]] = []
        self._number: dict[frozenset[Config], int] = {}
        self._moves: list[dict[str, int | None]] = []
        begin = ((rules.start, rules.automata[rules.start][0]),)
        self._begin = frozenset((stack, None, None) for stack in self._ready(begin))
        # The tokens' strings joined begin with what a decoded answer drops (``prefix``): read before the grammar.
        self.prefix = prefix
        self.start = self._state(frozenset((((), _PREFIX, 0),)) if prefix else self._begin)

    def accepting(self, state: int) -> bool:
        return ((), None, None) in self.states[state]

    def step(self, state: int, char: str) -> int | None:
        """The state after ``char`` (None: no sentence continues so)."""
        moves = self._moves[state]
        if char not in moves:
            following: set[Config] = set()
            for config in self.states[state]:
                following |= self._config_step(config).get(char, set())
            moves[char] = self._state(frozenset(following)) if following else None
        return moves[char]

    def _state(self, configs: frozenset[Config]) -> int:
        number = self._number.get(configs)
        if number is None:
            if len(self.states) >= self.max_states:
                raise ValueError(f"grammar: its automaton needs more than max_states={self.max_states} states at "
                                 f"depth={self.depth}; give a lower depth (how deep rules may nest), or a higher "
                                 "max_states")
            number = self._number[configs] = len(self.states)
            self.states.append(configs)
            self._moves.append({})
        return number

    def _ready(self, stack: Stack) -> frozenset[Stack]:
        """The stacks ``stack`` can reach without reading a character, whose current place reads a terminal
        (the empty stack: the sentence may end). A call whose return place has nothing left to read leaves
        no frame (loops written as right recursion take no stack); any other return place may appear at most
        ``depth`` times in a stack."""
        if stack in self._ready_memo:
            return self._ready_memo[stack]
        automata, terminals = self.rules.automata, self.rules.terminals
        ready: set[Stack] = set()
        seen: set[Stack] = set()
        work = [stack]
        while work:
            current = work.pop()
            if current in seen:
                continue
            seen.add(current)
            if not current:
                ready.add(current)
                continue
            rule, state = current[-1]
            _, final, moves = automata[rule]
            if state in final:
                work.append(current[:-1])
            for symbol, target in moves[state].items():
                if symbol in terminals:
                    ready.add(current)
                    continue
                back = (rule, target)
                if not moves[target] and target in final:
                    rest = current[:-1]
                elif current.count(back) < self.depth:
                    rest = current[:-1] + (back,)
                else:
                    continue  # nested deeper than depth
                work.append(rest + ((symbol, automata[symbol][0]),))
        self._ready_memo[stack] = result = frozenset(ready)
        return result

    def _config_step(self, config: Config) -> dict[str, set[Config]]:
        if config in self._config_moves:
            return self._config_moves[config]
        stack, reading, state = config
        out: dict[str, set[Config]] = defaultdict(set)
        if reading is _PREFIX:
            out[self.prefix[state]] = set(self._begin) if state + 1 == len(self.prefix) else {((), _PREFIX, state + 1)}
            self._config_moves[config] = dict(out)
            return self._config_moves[config]
        place = self.rules.automata[stack[-1][0]][2][stack[-1][1]] if stack else {}
        if reading is None:
            expected = [symbol for symbol in place if symbol in self.rules.terminals]
            starts = [(name, self.terminals[name].start) for name in [*expected, *self.ignore]]
        else:
            starts = [(reading, state)]
        for name, at in starts:
            terminal = self.terminals[name]
            for char, target in terminal.moves[at].items():
                if terminal.moves[target]:
                    out[char].add((stack, name, target))
                if target in terminal.final:
                    if name in self.ignore:
                        out[char].add((stack, None, None))
                    else:
                        read = stack[:-1] + ((stack[-1][0], place[name]),)
                        out[char].update((s, None, None) for s in self._ready(read))
        self._config_moves[config] = dict(out)
        return self._config_moves[config]


def _token_automaton(chars: _CharAutomaton, vocabulary: Vocabulary) -> TokenAutomaton:
    """Tokens over the character automaton: each state reached at a token boundary walks a trie of the
    tokens' strings (a branch ends where no sentence continues); states that cannot end accepted are dropped."""
    trie: dict[str, Any] = {}
    for token, text in enumerate(vocabulary.strings):
        if text and token not in (vocabulary.eos_token_id, vocabulary.mask_token_id):
            node = trie
            for char in text:
                node = node.setdefault(char, {})
            node.setdefault("", []).append(token)
    start = chars.start
    moves: dict[int, dict[int, int]] = {}
    work = [start]
    while work:
        state = work.pop()
        if state in moves:
            continue
        out = moves[state] = {}
        branches = [(state, trie)]
        while branches:
            at, node = branches.pop()
            for char, child in node.items():
                if char == "":
                    continue
                following = chars.step(at, char)
                if following is None:
                    continue
                for token in child.get("", ()):
                    out[token] = following
                    work.append(following)
                branches.append((following, child))
    # Keep the states from which an accepting one is reachable, numbered densely.
    into: dict[int, set[int]] = defaultdict(set)
    for state, out in moves.items():
        for target in out.values():
            into[target].add(state)
    alive = {state for state in moves if chars.accepting(state)}
    work = list(alive)
    while work:
        for source in into[work.pop()]:
            if source not in alive:
                alive.add(source)
                work.append(source)
    if start not in alive:
        raise ValueError("grammar: no sentence of it can be written with this vocabulary's tokens")
    number = {state: i for i, state in enumerate(sorted(alive))}
    table = [{token: number[target] for token, target in moves[state].items() if target in alive}
             for state in sorted(alive)]
    return TokenAutomaton(number[start], {number[s] for s in alive if chars.accepting(s)}, table,
                          vocabulary.eos_token_id)


def compile_characters(parser: Any, start: str, depth: int, max_states: int, alphabet: list[str],
                       prefix: str = "") -> _CharAutomaton:
    """The character automaton over ``alphabet`` of the grammar ``parser`` (``lark_parser``) read: lark's rules,
    outlines-core's terminals."""
    rules = [(rule.origin.name, tuple(symbol.name for symbol in rule.expansion)) for rule in parser.rules]
    terminals = {}
    for definition in parser.terminals:
        pattern = definition.pattern
        regex = _literal(pattern.value) if pattern.type == "str" and not pattern.flags else pattern.to_regexp()
        terminals[definition.name] = _Terminal(definition.name, regex, alphabet)
    ignore = [name for name in parser.ignore_tokens if name in terminals]
    return _CharAutomaton(Rules(rules, set(terminals), start), terminals, ignore, depth, max_states, prefix)


class GrammarConstraint(AutomatonConstraint):
    """Answers that are sentences of a context-free grammar in Lark's EBNF (terminals as regular expressions,
    ``%ignore`` and ``%import common`` as lark reads them), given inline (``grammar=TEXT``) or as a file
    (``file=PATH``, from the command line only): ``grammar:file=expr.lark``. The answer is its text before
    the first EOS. Nesting is bounded by ``depth`` (a rule open inside itself at most that many times);
    ``max_states`` bounds the automaton, which is refused above it.

    After Mündler, Dekoninck and Vechev 2025 (arXiv 2508.10111), with holes counted exactly."""

    # String parameters a request to `unmask serve` may set: data, never a path (docs/serve.md).
    request_strings = {"start": "text"}  # a grammar comes inline as response_format, compiled under the budget

    def __init__(self, grammar: str | None = None, file: str | None = None, start: str = "start",
                 depth: int = DEFAULT_DEPTH, max_states: int = DEFAULT_MAX_STATES) -> None:
        if (grammar is None) == (file is None):
            raise ValueError("grammar: give the grammar's text (grammar=...) or a file (file=PATH), one of them")
        if file is not None:
            try:
                grammar = Path(str(file)).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise ValueError(f"file={file!r}: cannot read it ({error.__class__.__name__})") from None
        if not isinstance(grammar, str) or not grammar.strip():
            raise ValueError(f"grammar must be a non-empty grammar in Lark's EBNF, got {grammar!r}")
        for name, value, low in (("depth", depth, 1), ("max_states", max_states, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(start, str) or not re.fullmatch(r"[_a-z][_a-z0-9]*", start):
            raise ValueError(f"start must name a rule of the grammar (lower case), got {start!r}")
        self._parser = lark_parser(grammar, start)  # (a grammar lark cannot read is an error now)
        self.grammar, self.file, self.start, self.depth, self.max_states = grammar, file, start, depth, max_states

    def _key(self) -> Any:
        return ("grammar", self.grammar, self.start, self.depth, self.max_states)

    def _build(self, vocabulary: Vocabulary) -> TokenAutomaton:
        texts = {char for text in vocabulary.strings for char in text} - {END_MARK}
        alphabet = sorted(texts | set(vocabulary.prefix) | STAND_INS)
        chars = compile_characters(self._parser, self.start, self.depth, self.max_states, alphabet,
                                   vocabulary.prefix)
        return _token_automaton(chars, vocabulary)


Grammar = GrammarConstraint
