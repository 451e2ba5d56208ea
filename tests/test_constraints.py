"""Constraints: every canvas stays completable, finished answers match, and a constraint that allows
everything changes nothing (checked against an independent brute-force completion search)."""

import json
import re

import attrs
import pytest
import regex
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unmask
from unmask.core.constraints import choose, vocabulary_of
from unmask.core.plugins import hookimpl, register_plugin, unregister_plugin
from unmask.testing.fake_model import FakeDenoiser, FakeTokenizer

WORDS = ["a", "b", " ", "ab", "1", "2", "{", "}", '"', ":", ",", "x", "true", "false"]


TOKENIZER = FakeTokenizer(words=WORDS)  # token i is WORDS[i]; EOS and the mask last
MODEL = FakeDenoiser(vocab_size=len(WORDS) + 2, seed=3)
PROMPTS = [[0, 1, 2], [3, 4], [5, 6, 7, 8]]


def completable(pattern, answer, mask, eos):
    """Whether the holes of ``answer`` can be filled, one token each (EOS: the answer ends), so that the
    answer's text fully matches ``pattern``: a search over fillings, pruned by the ``regex`` module's
    partial matching (an engine independent of the automaton under test)."""
    def search(i, text):
        if regex.fullmatch(pattern, text, partial=True) is None:
            return False
        if i == len(answer) or answer[i] == eos:
            rest = answer[i:]
            return all(t in (eos, mask) for t in rest) and re.fullmatch(pattern, text) is not None
        if answer[i] != mask:
            return search(i + 1, text + WORDS[answer[i]])
        if all(t in (eos, mask) for t in answer[i:]) and re.fullmatch(pattern, text):
            return True  # this hole and the rest: EOS
        return any(search(i + 1, text + word) for word in WORDS)
    return search(0, "")


def answers(result):
    return ["".join(WORDS[t] for t in row[:length]) for row, length in zip(result.tokens.tolist(),
                                                                           result.answer_lengths.tolist())]


@settings(max_examples=15, deadline=None)
@given(pattern=st.sampled_from(["(ab|a)+", "a( b)*", "[12]{2,5}", "(a|b)*1", "x?(true|false)"]),
       policy=st.sampled_from(["topk", "topk:k=3", "threshold:tau=0.3"]), gen=st.sampled_from([6, 8]))
def test_every_canvas_stays_completable_and_answers_match(pattern, policy, gen):
    steps = []
    result = unmask.decode(MODEL, PROMPTS, gen_length=gen, block_length=gen // 2, policy=policy,
                           constraint=("regex", {"pattern": pattern}), tokenizer=TOKENIZER,
                           on_step=lambda view: steps.append(view.x[:, view.gen_start:].clone()))
    for canvas in steps:
        for row in canvas.tolist():
            assert completable(pattern, row, MODEL.mask_token_id, MODEL.eos_token_id), (pattern, row)
    assert all(re.fullmatch(pattern, answer) for answer in answers(result)), answers(result)
    free = unmask.decode(MODEL, PROMPTS, gen_length=gen, block_length=gen // 2, policy=policy)
    if policy.startswith("topk"):  # a constraint never adds a forward to a fixed schedule
        assert (result.nfe <= free.nfe).all()


class Anything:
    """Allows every token and refuses nothing."""

    def prepare(self, vocabulary, gen_start):
        self.size = len(vocabulary.strings)

    def allowed(self, view, positions):
        return torch.ones((len(positions), self.size), dtype=torch.bool)

    def refuse(self, view, commit, tokens):
        return torch.zeros_like(commit)


class AnythingPlugin:
    @hookimpl
    def unmask_register_constraints(self, registry):
        registry.add("anything", Anything)


@pytest.mark.parametrize("policy", ["topk", "threshold:tau=0.5", "entropy_threshold", "local_leap"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_constraint_that_allows_everything_changes_nothing(policy, temperature):
    plugin = AnythingPlugin()
    register_plugin(plugin, "anything-test")
    try:
        settings = dict(gen_length=8, block_length=4, policy=policy, temperature=temperature, seed=5)
        free = unmask.decode(MODEL, PROMPTS, **settings)
        bound = unmask.decode(MODEL, PROMPTS, constraint="anything", tokenizer=TOKENIZER, **settings)
    finally:
        unregister_plugin(plugin)
    assert torch.equal(free.tokens, bound.tokens) and torch.equal(free.nfe, bound.nfe)
    assert bound.components["constraint"]["name"] == "anything"


def test_a_refused_pair_is_never_committed_in_its_step():
    class RefuseToken0:
        def refuse(self, view, commit, tokens):
            return commit & (tokens == 0)

    view = _view()
    logits = view.logits.clone()
    picked = []

    def select(view):
        mask = torch.zeros_like(view.masked)
        best = view.candidate_confidence.argmax(1)
        mask[torch.arange(len(best)), best] = True
        picked.append(view.x0[mask].tolist())
        return mask, view.x0

    def rescore(rows, columns):
        at = logits[rows, columns - view.gen_start]
        return at.argmax(-1), at.softmax(-1).max(-1).values.double()

    commit, tokens, _ = choose(RefuseToken0(), view, select, logits, view.gen_start, rescore, "refuse0",
                               lambda view: view.candidates)
    assert not (commit & (tokens == 0)).any()
    assert (logits[..., 0] == float("-inf")).any()  # the refused pair was banned in the step's logits



def test_a_position_refused_again_and_again_beside_kept_commits_waits_for_the_next_step(monkeypatch):
    import unmask.core.constraints as constraints

    class OnePerRow:  # refuses all but the leftmost commit of a row, whatever the tokens: no token fits
        def refuse(self, view, commit, tokens):
            first = commit.long().argmax(1, keepdim=True)
            return commit & (torch.arange(commit.shape[1])[None, :] != first)

    monkeypatch.setattr(constraints, "REFUSALS_BESIDE", 3)
    view = _view()
    logits = view.logits.clone()
    rounds = []

    def select(view):
        rounds.append(1)
        return view.masked & view.candidates, view.x0  # every position it may take

    def rescore(rows, columns):
        at = logits[rows, columns - view.gen_start]
        return at.argmax(-1), at.softmax(-1).max(-1).values.double()

    commit, tokens, after = choose(OnePerRow(), view, select, logits, view.gen_start, rescore, "one_per_row",
                                   lambda view: view.candidates)
    assert commit.sum() == 1 and commit[0, 2]  # the row still makes progress
    assert len(rounds) == 4  # three refusals each, then the others sit the step out
    assert not after.masked[0, 3:].any() and (logits[0, 1:, :3] == float("-inf")).all()

class RefuseEverything:
    """Allows every token, then refuses every commit: no canvas is ever acceptable."""

    def prepare(self, vocabulary, gen_start):
        pass

    def allowed(self, view, positions):
        return torch.ones((len(positions), len(WORDS) + 2), dtype=torch.bool)

    def refuse(self, view, commit, tokens):
        return commit


@pytest.mark.parametrize("policy", ["topk:k=2", "threshold:tau=0.9", "local_leap"])
def test_a_constraint_that_refuses_everything_is_an_error_not_a_hang(policy):
    with pytest.raises(ValueError, match="constraint .*every token was refused at every position row . could take"):
        unmask.decode(MODEL, PROMPTS, gen_length=8, block_length=4, policy=policy, constraint=RefuseEverything(),
                      tokenizer=TOKENIZER)


def _view():
    from unmask.testing.generators import step_views

    logits = torch.zeros(1, 4, len(WORDS) + 2)
    logits[..., 0] = 5.0  # token 0 is everyone's favourite
    logits[..., 1] = 4.0
    x = torch.tensor([[0, 1, MODEL.mask_token_id, MODEL.mask_token_id, MODEL.mask_token_id, MODEL.mask_token_id]])
    x0 = x.clone()
    x0[:, 2:] = 0
    confidence = torch.full(x.shape, float("-inf"), dtype=torch.float64)
    confidence[:, 2:] = 0.6
    return unmask.StepView(x=x, x0=x0, confidence=confidence, masked=x == MODEL.mask_token_id,
                           window=torch.ones_like(x, dtype=torch.bool), row_active=torch.ones(1, dtype=torch.bool),
                           schedule_k=torch.ones(1, dtype=torch.long), nfe=torch.zeros(1, dtype=torch.long),
                           logits=logits, generator=torch.Generator(), gen_start=2, block_start=2, block_end=6,
                           block_index=0, step=0, mask_token_id=MODEL.mask_token_id, eos_token_id=MODEL.eos_token_id)


def test_json_schema_output_is_valid_json_of_the_schema(tmp_path):
    schema = tmp_path / "flag.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"x": {"type": "boolean"}}, "required": ["x"],
                                  "additionalProperties": False}))
    result = unmask.decode(MODEL, PROMPTS, gen_length=16, block_length=8, policy="topk:k=2",
                           constraint=("json_schema", {"schema": str(schema)}), tokenizer=TOKENIZER)
    for answer in answers(result):
        assert isinstance(json.loads(answer)["x"], bool), answer


def test_distinct_items_never_repeats_an_item_within_a_group():
    result = unmask.decode(MODEL, PROMPTS, gen_length=12, block_length=4, policy="topk:k=4",
                           constraint="distinct_items:separator=','", tokenizer=TOKENIZER)
    free = unmask.decode(MODEL, PROMPTS, gen_length=12, block_length=4, policy="topk:k=4")
    for row in result.tokens.tolist():
        groups = [[]]
        for word in (WORDS[t].strip() for t in row if t < len(WORDS)):
            if word == ",":
                groups.append([])
            elif word:
                groups[-1].append(word)
        assert all(len(set(g)) == len(g) for g in groups), groups
    assert any(len(set(r)) < len(r) for r in free.tokens.tolist())  # unconstrained, items repeat


def _groups(row):
    """The answer's groups (split at "," and EOS) and whether each was closed by one."""
    groups, closed = [[]], []
    for token in row:
        word = WORDS[token].strip() if token < len(WORDS) else ""
        if word == "," or token == TOKENIZER.eos_token_id:
            closed.append(True)
            if token == TOKENIZER.eos_token_id:
                return groups, closed
            groups.append([])
        elif word:
            groups[-1].append(word)
    return groups, closed + [False]


@pytest.mark.parametrize("policy", ["topk:k=1", "topk:k=4", "threshold:tau=0.3"])
@pytest.mark.parametrize("seed", range(4))
def test_permutation_of_prompt_keeps_each_closed_group_a_permutation(policy, seed):
    # The prompt's items are those after its last ":": a, b, x (ab before it is not one).
    prompts = [[3, 9, 0, 1, 11], [3, 9, 11, 0, 1]]
    model = FakeDenoiser(vocab_size=len(WORDS) + 2, seed=seed)
    result = unmask.decode(model, prompts, gen_length=12, block_length=4, policy=policy,
                           constraint="distinct_items:separator=',',permutation_of_prompt=true", tokenizer=TOKENIZER)
    for row in result.tokens.tolist():
        groups, closed = _groups(row)
        assert all(set(g) <= {"a", "b", "x"} and len(set(g)) == len(g) for g in groups), groups
        assert all(sorted(g) == ["a", "b", "x"] for g, end in zip(groups, closed) if end), groups


@pytest.mark.parametrize("names", ["abx", "ab"])
def test_permutation_of_prompt_is_exact_on_small_canvases(names):
    # Against brute force: a token is allowed in a hole iff some filling of the holes is a valid answer.
    from itertools import product

    from unmask.constraints.distinct_items import DistinctItemsConstraint

    constraint = DistinctItemsConstraint(separator=",", permutation_of_prompt=True)
    constraint.prepare(vocabulary_of(TOKENIZER, len(WORDS) + 2, TOKENIZER.eos_token_id, TOKENIZER.mask_token_id), 0)
    mask, eos, comma, a, b, x = TOKENIZER.mask_token_id, TOKENIZER.eos_token_id, 10, 0, 1, 11
    items, choices = frozenset(names), (a, b, x, comma, eos, 2, 3)  # 2: a blank, 3: an item not in the prompt

    def valid(answer):
        answer = answer[:answer.index(eos)] if eos in answer else answer
        groups = [[]]
        for token in answer:
            if token == comma:
                groups.append([])
            else:
                groups[-1].append(WORDS[token])  # "ab" and " " are no items of the prompt: never valid
        return all(sorted(g) == sorted(names) for g in groups)

    for canvas in product((mask, a, b, comma, eos), repeat=len(names) + 2):
        holes = [i for i, t in enumerate(canvas) if t == mask]
        completions = []
        for filling in product(choices, repeat=len(holes)):
            answer = list(canvas)
            for i, t in zip(holes, filling):
                answer[i] = t
            if valid(answer):
                completions.append(answer)
        assert constraint._permutations_fit(list(canvas), mask, items) == bool(completions), canvas
        ended = canvas.index(eos) if eos in canvas else len(canvas)
        for at in [i for i in holes if i < ended]:  # (after a committed EOS only EOS: the engine cuts the row)
            allowed = constraint._permutation_allowed(list(canvas), at, mask, items)
            expected = {answer[at] for answer in completions}
            assert {t for t in choices if allowed[t]} == expected, (canvas, at)


@pytest.mark.parametrize("spec, message", [
    ("regex:pattern='[a-'", r"pattern='\[a-' is not a regular expression"),
    ("regex:pattern=''", "pattern must be a non-empty regular expression"),
    ("regex:pattern='(ab){20}'", "no token can go at row 0, answer position 0: no answer that fits in the canvas"),
    ("json_schema:schema=/no/such/file.json", "cannot read it"),
    ("distinct_items:permutation_of_prompt=3", "permutation_of_prompt must be true or false, got 3"),
    ("distinct_items:separator=' '", "separator must be a non-blank string"),
])
def test_bad_constraints_are_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        unmask.decode(MODEL, PROMPTS, gen_length=8, block_length=4, constraint=spec, tokenizer=TOKENIZER)


def test_a_schema_that_is_not_json_names_the_argument(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="schema=.*bad.json' is not JSON"):
        unmask.create("constraints", f"json_schema:schema='{bad}'")


def test_a_constraint_needs_the_tokenizer():
    with pytest.raises(ValueError, match="constraint: pass tokenizer= too"):
        unmask.decode(MODEL, PROMPTS, gen_length=8, block_length=4, constraint="distinct_items")


def test_a_grid_takes_constraints_as_a_dimension(tmp_path):
    from unmask.contrib.eval.ablate import load_grid

    grid = load_grid({"tasks": ["shuffle"], "n": 2, "policies": ["topk:k=8"], "constraints": ["none", "distinct_items"],
                      "baseline": {"policy": "topk:k=8"},
                      "gen_lengths": [32]})
    assert [cell.constraint for cell in grid.cells] == ["none", "distinct_items"]
    assert grid.cells[0].key == "shuffle | topk:k=8 | none | none | 32"  # as before constraints existed
    assert grid.cells[1].key.endswith("| distinct_items") and grid.is_baseline(grid.cells[0])
    assert not grid.is_baseline(grid.cells[1])
    with pytest.raises(ValueError, match="constraint"):
        load_grid({"tasks": ["shuffle"], "constraints": ["regex:pattern='[a-'"]})


def test_distinct_items_on_the_bundled_model_never_adds_a_forward_to_a_fixed_schedule():
    from unmask.contrib.models.reference import load_reference_model
    from unmask.contrib.models.transformers import decode_text
    from unmask.contrib.tasks import samples

    model, tokenizer = load_reference_model()
    prompts = [s.prompt for task in ("shuffle", "latin_square", "insert_random") for s in samples(task, 8, 3)]
    settings = dict(gen_length=32, block_length=16, policy="topk:k=8")
    bound, bound_result = decode_text(model, tokenizer, prompts, constraint="distinct_items", **settings)
    _, free_result = decode_text(model, tokenizer, prompts, **settings)
    assert (bound_result.nfe <= free_result.nfe).all()
    for answer in bound:
        for group in answer.split("/"):
            assert len(set(group.split())) == len(group.split()), answer
