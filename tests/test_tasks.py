import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unmask.contrib.tasks import SUITE, TASKS, TRAIN_SEED, get_task, samples, score, valid_answer
from unmask.contrib.tasks.lists import ITEMS, LIST_TASKS, ROW_SEPARATOR, SYMBOLS, latin_squares


@pytest.mark.parametrize("task", TASKS)
def test_sample_sets_are_reproducible_and_scored_exactly(task):
    first, again = samples(task, 5, seed=7), samples(task, 5, seed=7)
    assert [(s.prompt, s.answer) for s in first] == [(s.prompt, s.answer) for s in again]
    assert all(score(s, s.answer) for s in first)
    assert not any(score(s, s.answer + "0") for s in first)


@pytest.mark.parametrize("task", ["chain_sum", "copy", "latin_square"])
def test_seeds_index_items(task):
    # Item i of a set is made from seed + i: sets overlap when their seed ranges do.
    assert samples(task, 3, 10)[1].prompt == samples(task, 1, 11)[0].prompt
    assert samples(task, 1, 10)[0].seed == 10 and TRAIN_SEED > 10_000


def test_every_task_documents_its_rule_and_source():
    for name in SUITE:
        task = get_task(name)
        assert len(task.description) > 10 and task.source, name


def test_unknown_task_and_bad_n():
    with pytest.raises(ValueError, match="unknown task 'nope'; tasks: copy"):
        samples("nope", 1, 0)
    with pytest.raises(ValueError, match="n must be a positive"):
        samples("chain_sum", 0, 0)


list_samples = st.builds(lambda task, seed: samples(task, 1, seed)[0], st.sampled_from(sorted(LIST_TASKS)),
                         st.integers(0, 10**9))


@given(sample=list_samples, draw=st.integers(0, 2**32))
def test_every_valid_answer_scores(sample, draw):
    assert score(sample, valid_answer(sample, random.Random(draw)))


def _symbols(sample):
    """The answer's positions that hold items or symbols (not row separators)."""
    return [i for i, token in enumerate(sample.answer.split()) if token != ROW_SEPARATOR]


def _corrupt(sample, how, data):
    tokens = sample.answer.split()
    positions = _symbols(sample)
    i = data.draw(st.sampled_from(positions))
    if how == "duplicate":
        j = data.draw(st.sampled_from([p for p in positions if tokens[p] != tokens[i]]))
        tokens[i] = tokens[j]
    elif how == "missing":
        del tokens[i]
    elif how == "foreign":
        known = set(sample.entry.get("items", [])) | {sample.entry.get("extra")} | set(sample.entry.get("symbols", []))
        pool = SYMBOLS if "symbols" in sample.entry else ITEMS
        tokens[i] = data.draw(st.sampled_from([t for t in pool if t not in known]))
    else:  # one token too many
        tokens.insert(i, tokens[data.draw(st.sampled_from(positions))])
    return " ".join(tokens)


@given(sample=list_samples, how=st.sampled_from(["duplicate", "missing", "foreign", "longer"]), data=st.data())
def test_corrupted_answers_score_zero(sample, how, data):
    assert not score(sample, _corrupt(sample, how, data))


def test_shuffle_refuses_the_given_order_and_multi_answer_targets_are_uniform():
    sample = next(s for s in samples("shuffle", 50, 0) if len(s.entry["items"]) == 3)
    assert not score(sample, " ".join(sample.entry["items"]))
    rng = random.Random(0)
    counts = Counter(valid_answer(sample, rng) for _ in range(2000))
    assert len(counts) == 5 and min(counts.values()) > 300  # 5 orders, about 400 each
    square = next(s for s in samples("latin_square", 50, 0) if len(s.entry["symbols"]) == 3)
    counts = Counter(valid_answer(square, rng) for _ in range(1200))
    assert len(counts) == len(latin_squares(3)) == 12 and min(counts.values()) > 60


def test_latin_squares():
    assert len(latin_squares(4)) == 576
    for square in latin_squares(4):
        assert all(sorted(row) == [0, 1, 2, 3] for row in square)
        assert all(sorted(column) == [0, 1, 2, 3] for column in zip(*square))
