"""Procedural tasks with exact scorers, from the ``reasoning-gym`` package (``pip install unmask[tasks]``).

A sample set is ``(task, n, seed)``: reasoning-gym derives item ``i`` from seed ``seed + i``, so sets
with seeds ``s`` and ``s + 1`` share ``n - 1`` items. Evaluation sets use seeds below
``TRAIN_SEED`` (1,000,000); the bundled model was trained only on items from ``TRAIN_SEED`` upward.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

from attrs import field, frozen

__all__ = ["TASKS", "DEFAULT_TASKS", "TRAIN_SEED", "Task", "Sample", "samples", "score", "get_task"]

TRAIN_SEED = 1_000_000


def _first_line(question: str) -> str:
    return question.splitlines()[0]


def _puzzle_only(question: str) -> str:
    # Keep the puzzle and drop the rules and format lines, which are the same in every item.
    lines = question.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Solve this"))
    return "\n".join(lines[start:start + 5])


@frozen(kw_only=True)
class Task:
    """A reasoning-gym dataset with a fixed configuration and how its question becomes a prompt."""

    name: str
    dataset: str
    config: dict[str, Any]
    render: Callable[[str], str] = field(default=lambda question: question, eq=False)
    description: str = ""


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(name="chain_sum", dataset="chain_sum", description="a + b or a - b with one-digit numbers",
             config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)),
        Task(name="basic_arithmetic", dataset="basic_arithmetic", description="two one-digit terms with + - *",
             config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+", "-", "*"),
                         allow_parentheses=False, allow_negation=False)),
        Task(name="number_sorting", dataset="number_sorting", render=_first_line,
             description="sort 3-5 whole numbers in 0-9 (answer: a list of quoted numbers)",
             config=dict(min_numbers=3, max_numbers=5, min_decimals=0, max_decimals=0, min_value=0, max_value=9)),
        Task(name="number_filtering", dataset="number_filtering", render=_first_line,
             description="keep or remove the numbers of a 3-5 item list (0-9) above or below a bound",
             config=dict(min_numbers=3, max_numbers=5, min_decimals=0, max_decimals=0, min_value=0, max_value=9)),
        Task(name="spell_backward", dataset="spell_backward", description="reverse a word of 3-5 letters",
             config=dict(min_word_len=3, max_word_len=5)),
        Task(name="mini_sudoku", dataset="mini_sudoku", render=_puzzle_only,
             description="complete a 4x4 sudoku with 4-6 empty cells", config=dict(min_empty=4, max_empty=6)),
    )
}
# The bundled model's mix.
DEFAULT_TASKS = ("chain_sum", "basic_arithmetic", "number_sorting", "spell_backward")


@frozen(kw_only=True)
class Sample:
    task: str
    seed: int  # reasoning-gym's seed of this item
    prompt: str
    answer: str
    entry: dict[str, Any] = field(eq=False, repr=False)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def samples(task: str, n: int, seed: int) -> list[Sample]:
    """Items ``seed .. seed + n - 1`` of ``task``."""
    if n <= 0:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    spec = get_task(task)
    return [
        Sample(task=task, seed=seed + i, prompt=spec.render(entry["question"]), answer=entry["answer"], entry=entry)
        for i, entry in enumerate(_dataset(task, n, seed))
    ]


def score(sample: Sample, answer: str) -> bool:
    """reasoning-gym's scorer, counted as correct only at full score."""
    return _scorer(sample.task)(answer=answer, entry=sample.entry) >= 1.0


def _dataset(task: str, n: int, seed: int) -> Any:
    reasoning_gym = _reasoning_gym()
    spec = get_task(task)
    return reasoning_gym.create_dataset(spec.dataset, size=n, seed=seed, **spec.config)


@lru_cache(maxsize=None)
def _scorer(task: str) -> Callable[..., float]:
    return _reasoning_gym().get_score_answer_fn(get_task(task).dataset)


def _reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as error:
        raise ImportError("tasks need the reasoning-gym package: pip install 'unmask[tasks]'") from error
    return reasoning_gym
