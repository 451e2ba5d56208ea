"""Arithmetic tasks from the ``reasoning-gym`` package (``pip install unmask[tasks]``), with its scorers.

reasoning-gym derives item ``i`` of a dataset made with ``seed`` from ``seed + i``, so item ``s`` is the
first item of the dataset with seed ``s``: sample sets with seeds ``s`` and ``s + 1`` share ``n - 1`` items.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

from attrs import field, frozen

__all__ = ["GymTask", "GYM_TASKS"]


def _first_line(question: str) -> str:
    return question.splitlines()[0]


@frozen(kw_only=True)
class GymTask:
    """A reasoning-gym dataset with a fixed configuration and how its question becomes a prompt."""

    name: str
    dataset: str
    config: dict[str, Any]
    render: Callable[[str], str] = field(default=lambda question: question, eq=False)
    description: str = ""
    multi_answer: bool = False
    source: str = "reasoning-gym (open-thought/reasoning-gym)"

    def make_many(self, n: int, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
        """(prompt, answer, entry) of items ``seed .. seed + n - 1``."""
        dataset = _reasoning_gym().create_dataset(self.dataset, size=n, seed=seed, **self.config)
        return [(self.render(entry["question"]), entry["answer"], entry) for entry in dataset]

    def score(self, entry: dict[str, Any], answer: str) -> bool:
        """reasoning-gym's scorer, counted as correct only at full score."""
        return _scorer(self.dataset)(answer=answer, entry=entry) >= 1.0


GYM_TASKS: dict[str, GymTask] = {task.name: task for task in (
    GymTask(name="chain_sum", dataset="chain_sum", description="a + b or a - b with one-digit numbers",
            config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)),
    GymTask(name="basic_arithmetic", dataset="basic_arithmetic", description="two one-digit terms with + - *",
            config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+", "-", "*"),
                        allow_parentheses=False, allow_negation=False)),
    GymTask(name="number_sorting", dataset="number_sorting", render=_first_line,
            description="sort 3-5 whole numbers in 0-9 (answer: a list of quoted numbers)",
            config=dict(min_numbers=3, max_numbers=5, min_decimals=0, max_decimals=0, min_value=0, max_value=9)),
    GymTask(name="number_filtering", dataset="number_filtering", render=_first_line,
            description="keep or remove the numbers of a 3-5 item list (0-9) above or below a bound",
            config=dict(min_numbers=3, max_numbers=5, min_decimals=0, max_decimals=0, min_value=0, max_value=9)),
    GymTask(name="spell_backward", dataset="spell_backward", description="reverse a word of 3-5 letters",
            config=dict(min_word_len=3, max_word_len=5)),
)}


@lru_cache(maxsize=None)
def _scorer(dataset: str) -> Callable[..., float]:
    return _reasoning_gym().get_score_answer_fn(dataset)


def _reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as error:
        raise ImportError("the arithmetic tasks need the reasoning-gym package: pip install 'unmask[tasks]'") from error
    return reasoning_gym
