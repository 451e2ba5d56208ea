"""List and puzzle tasks where parallel decoding has something to lose (after ParallelBench, Kang et al. 2025,
arXiv 2510.04767; this project's own generators, items and scorers).

Each item is a list of 3-8 distinct names from a closed vocabulary (one token each). ``copy``, ``reverse``
and ``sort`` have one valid answer, so a model that knows it can write every position at once. The others
accept many answers (any reordering, any insertion point, ...): a model that knows the task spreads its
probability over them, so positions committed in the same step can mix two answers (a duplicate, a lost
item), while one position per step always stays consistent. ``latin_square`` asks for any n x n Latin
square (n = 3 or 4) on the given symbols, rows separated by ``/``.
"""

from __future__ import annotations

import itertools
import random
from functools import lru_cache
from typing import Any, Callable

from attrs import field, frozen

__all__ = ["ITEMS", "SYMBOLS", "ListTask", "LIST_TASKS", "latin_squares"]

# The closed item vocabulary: short made-up names, one token each.
ITEMS = ("ada", "ben", "cal", "dov", "eli", "fay", "gus", "hal", "ivo", "jan", "kim", "lev",
         "mia", "ned", "oda", "pam", "raj", "sal", "ted", "uma", "val", "wes", "yul", "zoe")
SYMBOLS = tuple("ABCDEFGHIJKLMNOP")
SQUARE_SYMBOLS = SYMBOLS[:8]  # latin_square's; the long variant draws from all of SYMBOLS
ROW_SEPARATOR = "/"


@frozen(kw_only=True)
class ListTask:
    """A seeded list task: ``make`` draws an item, ``target`` one valid answer uniformly, ``valid`` scores."""

    name: str
    description: str
    instruction: Callable[[dict[str, Any]], str] = field(eq=False)
    target: Callable[[dict[str, Any], random.Random], list[str]] = field(eq=False)
    valid: Callable[[dict[str, Any], list[str]], bool] = field(eq=False)
    multi_answer: bool
    draw: Callable[[random.Random], dict[str, Any]] = field(eq=False, default=lambda rng: _draw_list(rng))
    source: str = "unmask, after ParallelBench (arXiv 2510.04767)"

    def make(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        """(prompt, one valid answer, entry) of item ``seed``."""
        rng = random.Random(f"{self.name}:{seed}")
        entry = self.draw(rng)
        return self.instruction(entry), " ".join(self.target(entry, rng)), entry

    def score(self, entry: dict[str, Any], answer: str) -> bool:
        return self.valid(entry, answer.split())


def _draw_list(rng: random.Random) -> dict[str, Any]:
    """3-8 distinct names, and one name not among them (for insert and replace)."""
    items = rng.sample(ITEMS, rng.randint(3, 8))
    return {"items": items, "extra": rng.choice([name for name in ITEMS if name not in items])}


def _shuffled(items: list[str], rng: random.Random) -> list[str]:
    while True:  # any order but the given one (3+ distinct items: at most a few draws)
        order = rng.sample(items, len(items))
        if order != items:
            return order


def _one_edit(before: list[str], after: list[str], kind: str, extra: str) -> bool:
    """Whether ``after`` is ``before`` with one ``extra`` inserted, one item removed, or one replaced by ``extra``."""
    if kind == "insert":
        return len(after) == len(before) + 1 and any(
            after[i] == extra and after[:i] + after[i + 1:] == before for i in range(len(after)))
    if kind == "remove":
        return len(after) == len(before) - 1 and any(before[:i] + before[i + 1:] == after for i in range(len(before)))
    return len(after) == len(before) and any(
        after[i] == extra and after[:i] == before[:i] and after[i + 1:] == before[i + 1:] for i in range(len(before)))


@lru_cache(maxsize=None)
def latin_squares(n: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Every n x n Latin square over 0..n-1 (12 for n = 3, 576 for n = 4)."""
    rows = list(itertools.permutations(range(n)))
    squares: list[tuple[tuple[int, ...], ...]] = []

    def extend(square: list[tuple[int, ...]]) -> None:
        if len(square) == n:
            squares.append(tuple(square))
            return
        for row in rows:
            if all(row[c] != other[c] for other in square for c in range(n)):
                extend(square + [row])

    extend([])
    return tuple(squares)


def _latin_target(entry: dict[str, Any], rng: random.Random) -> list[str]:
    symbols = entry["symbols"]
    square = rng.choice(latin_squares(len(symbols)))
    return f" {ROW_SEPARATOR} ".join(" ".join(symbols[i] for i in row) for row in square).split()


def _latin_valid(entry: dict[str, Any], tokens: list[str]) -> bool:
    symbols, n = sorted(entry["symbols"]), len(entry["symbols"])
    rows = [row.split() for row in " ".join(tokens).split(ROW_SEPARATOR)]
    return (len(rows) == n and all(sorted(row) == symbols for row in rows)
            and all(sorted(column) == symbols for column in zip(*rows)))


def _items(entry: dict[str, Any]) -> str:
    return " ".join(entry["items"])


LIST_TASKS: dict[str, ListTask] = {task.name: task for task in (
    ListTask(name="copy", description="repeat the list", multi_answer=False,
             instruction=lambda e: f"copy: {_items(e)}", target=lambda e, rng: list(e["items"]),
             valid=lambda e, t: t == e["items"]),
    ListTask(name="reverse", description="the list in reverse order", multi_answer=False,
             instruction=lambda e: f"reverse: {_items(e)}", target=lambda e, rng: e["items"][::-1],
             valid=lambda e, t: t == e["items"][::-1]),
    ListTask(name="sort", description="the list in alphabetical order", multi_answer=False,
             instruction=lambda e: f"sort: {_items(e)}", target=lambda e, rng: sorted(e["items"]),
             valid=lambda e, t: t == sorted(e["items"])),
    ListTask(name="shuffle", description="the same items in any other order", multi_answer=True,
             instruction=lambda e: f"shuffle: {_items(e)}", target=lambda e, rng: _shuffled(e["items"], rng),
             valid=lambda e, t: sorted(t) == sorted(e["items"]) and t != e["items"]),
    ListTask(name="insert_random", description="the list with the given name inserted anywhere", multi_answer=True,
             instruction=lambda e: f"insert {e['extra']} anywhere: {_items(e)}",
             target=lambda e, rng: (lambda i: e["items"][:i] + [e["extra"]] + e["items"][i:])(
                 rng.randint(0, len(e["items"]))),
             valid=lambda e, t: _one_edit(e["items"], t, "insert", e["extra"])),
    ListTask(name="remove_random", description="the list with any one item removed", multi_answer=True,
             instruction=lambda e: f"remove one: {_items(e)}",
             target=lambda e, rng: (lambda i: e["items"][:i] + e["items"][i + 1:])(rng.randrange(len(e["items"]))),
             valid=lambda e, t: _one_edit(e["items"], t, "remove", e["extra"])),
    ListTask(name="replace_random", description="the list with any one item replaced by the given name",
             multi_answer=True, instruction=lambda e: f"replace one with {e['extra']}: {_items(e)}",
             target=lambda e, rng: (lambda i: e["items"][:i] + [e["extra"]] + e["items"][i + 1:])(
                 rng.randrange(len(e["items"]))),
             valid=lambda e, t: _one_edit(e["items"], t, "replace", e["extra"])),
    ListTask(name="latin_square", description="any 3x3 or 4x4 Latin square on the given symbols, rows split by /",
             multi_answer=True, instruction=lambda e: f"latin square: {' '.join(e['symbols'])}",
             draw=lambda rng: {"symbols": rng.sample(SQUARE_SYMBOLS, rng.choice((3, 4)))},
             target=_latin_target, valid=_latin_valid),
)}
