import pytest

from unmask.contrib.tasks import TASKS, TRAIN_SEED, samples, score


@pytest.mark.parametrize("task", TASKS)
def test_sample_sets_are_reproducible_and_scored_exactly(task):
    first, again = samples(task, 5, seed=7), samples(task, 5, seed=7)
    assert [s.prompt for s in first] == [s.prompt for s in again]
    assert all(score(s, s.answer) for s in first)
    assert not any(score(s, s.answer + "0") for s in first)


def test_seeds_index_items():
    # reasoning-gym derives item i from seed + i: sets overlap when their seed ranges do.
    assert samples("chain_sum", 3, 10)[1].prompt == samples("chain_sum", 1, 11)[0].prompt
    assert samples("chain_sum", 1, 10)[0].seed == 10 and TRAIN_SEED > 10_000


def test_unknown_task_and_bad_n():
    with pytest.raises(ValueError, match="unknown task 'nope'; tasks: chain_sum"):
        samples("nope", 1, 0)
    with pytest.raises(ValueError, match="n must be a positive"):
        samples("chain_sum", 0, 0)
