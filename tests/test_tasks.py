import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unmask.contrib.tasks import LONG_SUITE, SUITE, TASKS, TRAIN_SEED, get_task, samples, score, valid_answer
from unmask.contrib.tasks.lists import ITEMS, LIST_TASKS, ROW_SEPARATOR, SYMBOLS, latin_squares
from unmask.contrib.tasks.long import LONG_TASKS, random_latin_square, reduced_latin_squares


@pytest.mark.parametrize("task", TASKS)
def test_sample_sets_are_reproducible_and_scored_exactly(task):
    first, again = samples(task, 5, seed=7), samples(task, 5, seed=7)
    assert [(s.prompt, s.answer) for s in first] == [(s.prompt, s.answer) for s in again]
    assert all(score(s, s.answer) for s in first)
    assert not any(score(s, s.answer + "1") for s in first)  # ("00" is a valid 0)


@pytest.mark.parametrize("task", ["chain_sum", "copy", "latin_square"])
def test_seeds_index_items(task):
    # A set holds the first items of its part from its seed on: sets overlap when their seed ranges do.
    drawn = samples(task, 3, 10)
    assert [s.prompt for s in samples(task, 2, drawn[0].seed + 1)] == [s.prompt for s in drawn[1:]]
    assert drawn[0].seed >= 10 and TRAIN_SEED > 10_000


def test_every_task_documents_its_rule_and_source():
    for name in SUITE + LONG_SUITE:
        task = get_task(name)
        assert len(task.description) > 10 and task.source, name


def test_unknown_task_and_bad_n():
    with pytest.raises(ValueError, match="unknown task 'nope'; tasks: copy"):
        samples("nope", 1, 0)
    with pytest.raises(ValueError, match="n must be a positive"):
        samples("chain_sum", 0, 0)


list_samples = st.builds(lambda task, seed: samples(task, 1, seed)[0], st.sampled_from(sorted({**LIST_TASKS, **LONG_TASKS})),
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


def test_long_tasks_have_long_answers():
    from unmask.contrib.models.reference import load_reference_model

    _, tokenizer = load_reference_model()
    for task in LONG_SUITE:
        lengths = [len(tokenizer(s.answer)["input_ids"]) for s in samples(task, 40, 0)]
        assert min(lengths) >= 20 and max(lengths) <= 256, (task, min(lengths), max(lengths))
    chains = [len(tokenizer(s.answer)["input_ids"]) for s in samples("chain_sum_long", 40, 0)]
    assert min(chains) >= 100 and max(chains) <= 250


def test_running_sums_stay_in_range_and_ignore_spacing():
    for sample in samples("chain_sum_long", 30, 0):
        totals = [int(word) for word in sample.answer.split()[::4]]  # the start, then each partial sum
        assert all(0 <= t <= 99 for t in totals) and len(totals) == len(sample.entry["terms"])
        assert score(sample, sample.answer.replace(" ", ""))
        wrong = sample.answer.split()
        wrong[-1] = str(int(wrong[-1]) + 1)
        assert not score(sample, " ".join(wrong))


def test_long_latin_squares_are_drawn_uniformly():
    assert len(reduced_latin_squares(5)) == 56 and len(reduced_latin_squares(6)) == 9408
    rng = random.Random(0)
    squares = Counter(tuple(map(tuple, random_latin_square(5, rng))) for _ in range(20000))
    assert all(sorted(row) == [0, 1, 2, 3, 4] for square in squares for row in square)
    # 161,280 squares: 20,000 draws are nearly all distinct, and every first row is as likely as another
    assert len(squares) > 18000
    first_rows = Counter(square[0] for square in squares.elements())
    assert len(first_rows) == 120 and max(first_rows.values()) < 3 * 20000 / 120
