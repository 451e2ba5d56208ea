"""The grammar constraint: canvases stay completable within the positions left (checked by an independent
search with lark's parser), finished answers parse, a regular grammar equals its regex, a permissive grammar
changes nothing, and a grammar too large for the budget is refused up front."""

import json
import string
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unmask
from unmask.constraints import Grammar, RegexConstraint
from unmask.constraints.grammar import lark_parser
from unmask.core.constraints import vocabulary_of
from unmask.testing.fake_model import FakeDenoiser, FakeTokenizer

GRAMMARS = Path(__file__).parents[1] / "examples" / "grammars"
WORDS = ["1", "2", "+", "(", ")", "((", "1)", " ", "a", "b"]
ARITHMETIC = (GRAMMARS / "arithmetic.lark").read_text()
NESTED = 'start: "a" | "(" start ")" | start "+" start'


TOKENIZER = FakeTokenizer(words=WORDS)  # token i is WORDS[i]; EOS and the mask last
MODEL = FakeDenoiser(vocab_size=len(WORDS) + 2, seed=4)
PROMPTS = [[0, 1], [2, 3, 4], [5]]


def parses(parser, text):
    try:
        parser.parse(text)
        return True
    except Exception:  # lark's errors: unexpected characters, tokens or end of input
        return False


def completable(parser, answer, mask, eos, parentheses):
    """Whether the holes can be filled, one token each (EOS ends the answer), into a sentence lark parses and
    that nests at most ``parentheses`` deep: a search over fillings, independent of the automaton."""
    def balanced(text):
        level = 0
        for char in text:
            level += {"(": 1, ")": -1}.get(char, 0)
            if level > parentheses:
                return False
        return True

    def search(i, text):
        if not balanced(text):
            return False
        if i == len(answer) or answer[i] == eos or (answer[i] == mask and all(t in (eos, mask) for t in answer[i:])
                                                    and parses(parser, text)):
            return all(t in (eos, mask) for t in answer[i:]) and parses(parser, text)
        if answer[i] != mask:
            return search(i + 1, text + WORDS[answer[i]])
        return any(search(i + 1, text + word) for word in WORDS)
    return search(0, "")


@settings(max_examples=12, deadline=None)
@given(grammar=st.sampled_from([ARITHMETIC, NESTED]), policy=st.sampled_from(["topk", "topk:k=3", "threshold:tau=0.3"]),
       gen=st.sampled_from([5, 6]), depth=st.sampled_from([1, 2]))
def test_every_canvas_stays_completable_within_the_positions_left_and_answers_parse(grammar, policy, gen, depth):
    parser = lark_parser(grammar)
    steps = []
    result = unmask.decode(MODEL, PROMPTS, gen_length=gen, block_length=gen, policy=policy, tokenizer=TOKENIZER,
                           constraint=Grammar(grammar, depth=depth),
                           on_step=lambda view: steps.append(view.x[:, view.gen_start:].clone()))
    parentheses = depth - 1 if grammar == ARITHMETIC else depth  # its sum is open once outside any parenthesis
    for canvas in steps:
        for row in canvas.tolist():
            assert completable(parser, row, MODEL.mask_token_id, MODEL.eos_token_id, parentheses), row
    for row, length in zip(result.tokens.tolist(), result.answer_lengths.tolist()):
        assert parses(parser, TOKENIZER.decode(row[:length])), TOKENIZER.decode(row[:length])


@pytest.mark.parametrize("policy", ["topk", "topk:k=2", "threshold:tau=0.5"])
def test_a_regular_grammar_gives_the_tokens_of_its_regex(policy):
    settings = dict(gen_length=6, block_length=3, policy=policy, tokenizer=TOKENIZER)
    grammar = unmask.decode(MODEL, PROMPTS, constraint=Grammar('start: NUMBER ("+" NUMBER)*\nNUMBER: /[12]+/'),
                            **settings)
    regex = unmask.decode(MODEL, PROMPTS, constraint=("regex", {"pattern": "[12]+(\\+[12]+)*"}), **settings)
    assert torch.equal(grammar.tokens, regex.tokens) and torch.equal(grammar.nfe, regex.nfe)


@pytest.mark.parametrize("policy", ["topk:k=2", "threshold:tau=0.3"])
def test_a_grammar_that_accepts_everything_changes_nothing(policy):
    """Every text and no EOS proposed (a model that never favours it): tokens and forwards as unconstrained."""
    model = FakeDenoiser(vocab_size=len(WORDS) + 2, seed=4, eos_bias=-50.0)
    anything = 'start: TOKEN*\nTOKEN: /[12+() ab]/'
    settings = dict(gen_length=8, block_length=4, policy=policy)
    free = unmask.decode(model, PROMPTS, **settings)
    bound = unmask.decode(model, PROMPTS, constraint=Grammar(anything), tokenizer=TOKENIZER, **settings)
    assert not (free.tokens == TOKENIZER.eos_token_id).any()
    assert torch.equal(free.tokens, bound.tokens) and torch.equal(free.nfe, bound.nfe)


@settings(max_examples=25, deadline=None)
@given(holes=st.lists(st.sampled_from([None, 0, 2, 3, 4, 5, 6]), min_size=1, max_size=7))
def test_a_canvas_the_checker_accepts_can_be_finished_greedily(holes):
    """Fill the first hole with the first allowed token, again and again: the answer always parses."""
    constraint = Grammar(ARITHMETIC, depth=2)
    constraint.prepare(vocabulary_of(TOKENIZER, len(TOKENIZER), TOKENIZER.eos_token_id, TOKENIZER.mask_token_id), 0)
    automaton, mask, eos = constraint._prepared(), TOKENIZER.mask_token_id, TOKENIZER.eos_token_id
    answer = [mask if token is None else token for token in holes]
    if not automaton.completable(answer, mask):
        return
    while mask in answer:
        at = answer.index(mask)
        before, after = automaton.forward(answer, mask), automaton.backward(answer, mask)
        allowed = automaton.allowed(before[at], after[at + 1], len(TOKENIZER)).nonzero().flatten().tolist()
        assert allowed, answer
        answer[at] = allowed[0]
        assert automaton.completable(answer, mask)
    text = TOKENIZER.decode(answer[:answer.index(eos)] if eos in answer else answer)
    assert parses(lark_parser(ARITHMETIC), text), text


def test_holes_count_exactly():
    constraint = Grammar(ARITHMETIC)
    constraint.prepare(vocabulary_of(TOKENIZER, len(TOKENIZER), TOKENIZER.eos_token_id, TOKENIZER.mask_token_id), 0)
    automaton, mask = constraint._prepared(), TOKENIZER.mask_token_id
    opened = [3, 3, 0, 2]  # "((1+": two holes close it with "1)" and ")", one cannot
    assert automaton.completable(opened + [mask, mask], mask)
    assert not automaton.completable(opened + [mask], mask)
    assert not automaton.completable([4], mask)  # ")" begins no sentence


def test_the_shipped_grammars_give_parsing_answers_on_a_random_model():
    characters = string.ascii_lowercase + string.digits + ' +-*/()[]{}",:.'
    from unmask.contrib.models.tiny import tiny_denoiser, tiny_tokenizer

    tokenizer = tiny_tokenizer(characters=characters)
    model = tiny_denoiser(characters=characters, seed=1)
    for name in ("arithmetic", "json", "sexpr"):
        text = (GRAMMARS / f"{name}.lark").read_text()
        result = unmask.decode(model, [tokenizer.encode("ab")] * 2, gen_length=24, block_length=12, policy="topk:k=3",
                               constraint=Grammar(text), tokenizer=tokenizer, temperature=1.0, seed=0)
        for row, length in zip(result.tokens.tolist(), result.answer_lengths.tolist()):
            assert parses(lark_parser(text), tokenizer.decode(row[:length])), (name, tokenizer.decode(row[:length]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(grammar="start: (("), "grammar: "),
    (dict(), "one of them"),
    (dict(grammar="start: x"), "Rule 'x' used but not defined"),
    (dict(grammar='start: "a"', depth=0), "depth must be an integer >= 1"),
    (dict(grammar='start: "a"', start="Nope"), "start must name a rule"),
    (dict(file="/nonexistent/g.lark"), "cannot read it"),
])
def test_bad_grammars_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Grammar(**kwargs)


def test_a_grammar_past_the_state_budget_is_refused_up_front():
    with pytest.raises(ValueError, match="max_states=5 .*depth=4"):
        unmask.decode(MODEL, PROMPTS, gen_length=4, block_length=4, constraint=Grammar(ARITHMETIC, max_states=5),
                      tokenizer=TOKENIZER)


def test_the_command_line_decodes_under_a_grammar_file(tmp_path, capsys):
    from unmask.contrib.cli import main

    # The bundled model's tokens are words, joined by spaces.
    grammar = 'start: NUMBER (("+" | "-") NUMBER)*\nNUMBER: /[0-9]+/\n%ignore " "'
    (tmp_path / "sum.lark").write_text(grammar)
    assert main(["generate", "Calculate 1 + 2 =", "--constraint", f"grammar:file={tmp_path / 'sum.lark'}",
                 "--gen-length", "16", "--block-length", "8"]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer and parses(lark_parser(grammar), answer), answer


def test_a_spec_reads_a_grammar_file():
    constraint = unmask.create("constraints", f"grammar:file={GRAMMARS / 'arithmetic.lark'}")
    assert constraint.grammar == ARITHMETIC


@settings(max_examples=30, deadline=None)
@given(canvas=st.lists(st.sampled_from([None, None, 0, 2, 3, 4, 6]), min_size=1, max_size=5),
       grammar=st.sampled_from(["arithmetic", "regex"]))
def test_a_token_is_allowed_exactly_when_the_canvas_stays_completable(canvas, grammar):
    """Sound and complete at every hole, for the grammar and for the regex constraint (an accepting state
    that can go on must keep its moves: outlines-core's index alone drops them)."""
    if grammar == "arithmetic":
        constraint, parser, parentheses = Grammar(ARITHMETIC, depth=3), lark_parser(ARITHMETIC), 2
    else:
        constraint = RegexConstraint("1(\\+1)?|2")
        parser, parentheses = lark_parser('start: "1" ("+" "1")? | "2"'), 9
    constraint.prepare(vocabulary_of(TOKENIZER, len(TOKENIZER), TOKENIZER.eos_token_id, TOKENIZER.mask_token_id), 0)
    automaton, mask, eos = constraint._prepared(), TOKENIZER.mask_token_id, TOKENIZER.eos_token_id
    answer = [mask if token is None else token for token in canvas]
    before, after = automaton.forward(answer, mask), automaton.backward(answer, mask)
    for at in [i for i, token in enumerate(answer) if token == mask]:
        allowed = automaton.allowed(before[at], after[at + 1], len(TOKENIZER))
        for token in range(len(WORDS)):
            filled = answer[:at] + [token] + answer[at + 1:]
            assert bool(allowed[token]) == completable(parser, filled, mask, eos, parentheses), (answer, at, token)


def test_a_recursive_schema_outlines_core_refuses_goes_through_the_grammar_route(tmp_path):
    schema = {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}}]}  # a tree of integers
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(ValueError, match="recusion|recursion"):
        __import__("outlines_core").json_schema.build_regex_from_schema(json.dumps(schema))

    def tree(value):
        return isinstance(value, int) or isinstance(value, list) and all(map(tree, value))

    characters = string.digits + "[],-"
    from unmask.contrib.models.tiny import tiny_denoiser, tiny_tokenizer

    tokenizer, model = tiny_tokenizer(characters=characters), tiny_denoiser(characters=characters, seed=2)
    result = unmask.decode(model, [tokenizer.encode(p) for p in ("1", "[2", "3]")], gen_length=16, block_length=8,
                           policy="topk:k=2", constraint=("json_schema", {"schema": str(path)}), tokenizer=tokenizer,
                           temperature=1.0, seed=0)
    texts = [tokenizer.decode(row[:n]) for row, n in zip(result.tokens.tolist(), result.answer_lengths.tolist())]
    assert all(tree(json.loads(text)) for text in texts), texts


@pytest.mark.parametrize("schema, message", [
    ({"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}, "minItems": 2}]}, "minItems"),
    ({"anyOf": [{"type": "string", "pattern": "a+"}, {"type": "array", "items": {"$ref": "#"}}]}, "pattern"),
])
def test_a_recursive_schema_the_grammar_route_cannot_express_is_refused_by_keyword(tmp_path, schema, message):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(ValueError, match=message):
        unmask.create("constraints", f"json_schema:schema={path}")


def test_a_grid_takes_a_grammar_as_a_constraint():
    from unmask.contrib.eval.ablate import load_grid

    spec = f"grammar:file={GRAMMARS / 'arithmetic.lark'}"
    grid = load_grid({"tasks": ["chain_sum"], "n": 2, "policies": ["topk"], "constraints": ["none", spec],
                      "gen_lengths": [32]})
    assert [cell.constraint for cell in grid.cells] == ["none", spec]
    with pytest.raises(ValueError, match="constraint"):
        load_grid({"tasks": ["chain_sum"], "constraints": ["grammar:grammar='start: (('"]})
