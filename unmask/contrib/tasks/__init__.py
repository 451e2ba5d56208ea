"""Procedural tasks with exact scorers: sample sets are ``(task, n, seed, part)``: the first ``n`` items of
``part`` (:func:`split_of`) among the items made from seeds ``seed``, ``seed + 1``, ...

Two families: the list and puzzle tasks of :mod:`unmask.contrib.tasks.lists` (several of them accept many
answers, so parallel decoding can lose on them) and reasoning-gym's arithmetic in
:mod:`unmask.contrib.tasks.gym`. Evaluation draws only prompts of the ``"eval"`` part and training only
those of the ``"train"`` part, so no evaluated prompt was trained on, whatever the seeds; training also
keeps to seeds from ``TRAIN_SEED`` (1,000,000) upward, evaluation below it.
"""

from __future__ import annotations

import random
from typing import Any

from attrs import field, frozen

from unmask.contrib.tasks.gym import GYM_TASKS, GymTask
from unmask.contrib.tasks.lists import LIST_TASKS, ListTask
from unmask.contrib.tasks.long import LONG_TASKS
from unmask.contrib.tasks.split import EVAL_SHARE, Part, check_part, split_of

__all__ = ["EVAL_SHARE", "split_of", "check_evaluation_seeds", "TASKS", "DEFAULT_TASKS", "SUITE", "LONG_SUITE",
           "TRAIN_SEED", "Task", "Sample", "samples", "score", "get_task", "valid_answer"]

TRAIN_SEED = 1_000_000

Task = ListTask | GymTask
TASKS: dict[str, Task] = {**LIST_TASKS, **GYM_TASKS, **LONG_TASKS}
# The parallelism testbed: list operations with one or many valid answers, a puzzle, and arithmetic.
SUITE = ("copy", "reverse", "sort", "shuffle", "insert_random", "remove_random", "replace_random", "latin_square",
         "chain_sum", "basic_arithmetic")
# Answers of several blocks (20-60 items, 5x5 and 6x6 squares, a running sum of 100-250 tokens).
LONG_SUITE = tuple(LONG_TASKS)
# The bundled model's mix: the default of bench, collect and ablate.
DEFAULT_TASKS = SUITE


@frozen(kw_only=True)
class Sample:
    task: str
    seed: int  # the item's seed
    prompt: str
    answer: str  # one valid answer (the only one for single-answer tasks)
    entry: dict[str, Any] = field(eq=False, repr=False)  # what the scorer needs


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def check_evaluation_seeds(n: int, seed: int, *, argument: str = "seed") -> None:
    """Refuse an evaluation sample set that reaches the training seeds (``TRAIN_SEED`` and up)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{argument} must be an integer >= 0, got {seed!r}")
    if seed + n > TRAIN_SEED:
        raise ValueError(f"{argument}={seed} with n={n} reaches the training seeds ({TRAIN_SEED} and up): "
                         f"evaluation items are the seeds below {TRAIN_SEED}")


def samples(task: str, n: int, seed: int, part: Part = "eval") -> list[Sample]:
    """The first ``n`` items of ``task`` whose prompt lies in ``part``, made from seeds ``seed``, ``seed + 1``, ...
    (about one seed in four for ``"eval"``: ``EVAL_SHARE``)."""
    if n <= 0:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    spec, part = get_task(task), check_part(part)
    found: list[Sample] = []
    start, limit = seed, seed + 100 * n + 10_000  # a space that small is a bug in the task, not bad luck
    while len(found) < n:
        if start >= limit:
            raise ValueError(f"task {task!r} has fewer than {n} prompts in its {part!r} part from seed {seed}")
        count = 2 * (n - len(found)) + 8  # items are cheap; reasoning-gym's are made a dataset at a time
        made = spec.make_many(count, start) if isinstance(spec, GymTask) else [spec.make(start + i) for i in range(count)]
        found += [Sample(task=task, seed=start + i, prompt=prompt, answer=answer, entry=entry)
                  for i, (prompt, answer, entry) in enumerate(made) if split_of(task, prompt) == part]
        start += count
    return found[:n]


def score(sample: Sample, answer: str) -> bool:
    """Whether ``answer`` is a valid answer to ``sample`` (every valid one scores, nothing else)."""
    return get_task(sample.task).score(sample.entry, answer)


def valid_answer(sample: Sample, rng: random.Random) -> str:
    """A valid answer drawn uniformly among all of them (training targets for multi-answer tasks)."""
    spec = get_task(sample.task)
    return " ".join(spec.target(sample.entry, rng)) if isinstance(spec, ListTask) else sample.answer
