"""The content split: evaluation draws only "eval" prompts, training and filter traces only "train" ones."""

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

import unmask.contrib.train.model as training
from unmask.contrib.tasks import EVAL_SHARE, SUITE, TASKS, samples, split_of
from unmask.contrib.train.model import TrainingConfig


@given(task=st.sampled_from(sorted(TASKS)), prompt=st.text(max_size=80))
def test_the_part_is_a_pure_function_of_task_and_prompt(task, prompt):
    assert split_of(task, prompt) == split_of(task, prompt) in ("train", "eval")


def test_the_eval_share_holds_on_every_task():
    for task in TASKS:
        parts = Counter(split_of(task, f"{task}: item {i}") for i in range(4000))
        assert abs(parts["eval"] / 4000 - EVAL_SHARE) < 0.03, (task, parts)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sample_sets_keep_to_their_part(task):
    for part in ("eval", "train"):
        drawn = samples(task, 12, seed=40, part=part)
        assert len(drawn) == 12 and all(split_of(task, s.prompt) == part for s in drawn)
        assert [s.seed for s in drawn] == sorted(s.seed for s in drawn) and drawn[0].seed >= 40


def test_bad_part_and_bad_split_arguments():
    with pytest.raises(ValueError, match="part must be one of train, eval, got 'test'"):
        samples("copy", 1, 0, part="test")
    with pytest.raises(TypeError, match="strings"):
        split_of("copy", None)


def test_a_replayed_training_stream_holds_no_evaluation_prompt():
    # The bundled model's stream (its tasks, weights and seed), replayed as text: every prompt is "train".
    config = TrainingConfig(arithmetic_items=2000)
    examples = training._Examples(config)
    rng = random.Random(config.seed)
    drawn = [sample for _ in range(40) for sample, _ in examples.draw_text(rng, 128)]
    assert {sample.task for sample in drawn} == set(SUITE)
    leaked = [(s.task, s.prompt) for s in drawn if split_of(s.task, s.prompt) == "eval"]
    assert leaked == []
    # ... while the same tasks' evaluation sets are all "eval" and share no prompt with it.
    evaluated = {(task, s.prompt) for task in SUITE for s in samples(task, 50, 0)}
    assert not evaluated & {(s.task, s.prompt) for s in drawn}
