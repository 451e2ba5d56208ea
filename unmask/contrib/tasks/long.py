"""Long-answer tasks: answers of several blocks, where KV caches and early stops have something to save.

``copy_long``, ``reverse_long``, ``sort_long`` and ``shuffle_long`` take lists of 20-60 names drawn from
``ITEMS`` with repeats (24 names cannot fill 60 distinct places); ``latin_square_long`` asks for any 5 x 5 or
6 x 6 Latin square on 5 or 6 of 16 symbols (drawn uniformly among all of them: 161,280 and 812,851,200);
``chain_sum_long`` writes a running sum out step by step, ``7 + 3 = 10 - 5 = 5 + ...``, 18-35 one-digit terms
with every partial sum in 0-99 (about 100-250 tokens of the bundled tokenizer): one valid answer whose every
step depends on the one before, the sequential kind that parallel decoding breaks.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

from unmask.contrib.tasks.lists import ITEMS, ROW_SEPARATOR, SYMBOLS, ListTask, _latin_valid, _shuffled

__all__ = ["LONG_TASKS", "reduced_latin_squares", "random_latin_square"]

LONG_ITEMS = (20, 60)  # list lengths
LONG_TERMS = (18, 35)  # chain_sum_long's terms
SOURCE = "unmask (long-answer variants of its task suite)"


def _draw_long_list(rng: random.Random) -> dict[str, Any]:
    items = rng.choices(ITEMS, k=rng.randint(*LONG_ITEMS))
    if len(set(items)) == 1:  # shuffle needs two orders at least: make one item differ
        items[0] = next(name for name in ITEMS if name != items[1])
    return {"items": items}


@lru_cache(maxsize=None)
def reduced_latin_squares(n: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Every n x n Latin square over 0..n-1 whose first row and column are 0..n-1 (56 for n = 5, 9,408 for
    n = 6), by backtracking over cells."""
    squares: list[tuple[tuple[int, ...], ...]] = []
    grid = [[(c if r == 0 else r if c == 0 else -1) for c in range(n)] for r in range(n)]
    cells = [(r, c) for r in range(1, n) for c in range(1, n)]

    def fill(index: int) -> None:
        if index == len(cells):
            squares.append(tuple(tuple(row) for row in grid))
            return
        r, c = cells[index]
        used = set(grid[r][:c]) | {grid[k][c] for k in range(r)}
        for value in range(n):
            if value not in used:
                grid[r][c] = value
                fill(index + 1)
        grid[r][c] = -1

    fill(0)
    return tuple(squares)


def random_latin_square(n: int, rng: random.Random) -> list[list[int]]:
    """A Latin square drawn uniformly among all n x n: each is exactly one reduced square with its columns
    permuted (n! ways) and its rows after the first permuted ((n - 1)! ways)."""
    square = rng.choice(reduced_latin_squares(n))
    columns = rng.sample(range(n), n)
    rows = [0] + rng.sample(range(1, n), n - 1)
    return [[square[r][c] for c in columns] for r in rows]


def _latin_long_target(entry: dict[str, Any], rng: random.Random) -> list[str]:
    symbols = entry["symbols"]
    square = random_latin_square(len(symbols), rng)
    return f" {ROW_SEPARATOR} ".join(" ".join(symbols[i] for i in row) for row in square).split()


def _draw_chain(rng: random.Random) -> dict[str, Any]:
    """Signed one-digit terms whose every partial sum stays in 0-99 (the first term is the start)."""
    total = rng.randint(1, 9)
    terms = [total]
    for _ in range(rng.randint(*LONG_TERMS) - 1):
        digit = rng.randint(1, 9)
        signs = [sign for sign in (1, -1) if 0 <= total + sign * digit <= 99]
        term = digit * rng.choice(signs)
        terms.append(term)
        total += term
    return {"terms": terms}


def _chain_prompt(entry: dict[str, Any]) -> str:
    first, *rest = entry["terms"]
    return "running sum: " + " ".join([str(first)] + [f"{'+' if t > 0 else '-'} {abs(t)}" for t in rest])


def _chain_steps(entry: dict[str, Any]) -> list[str]:
    """``7 + 3 = 10 - 5 = 5 ...``: each term, then the partial sum it makes."""
    total, *rest = entry["terms"]
    words = [str(total)]
    for term in rest:
        total += term
        words += ["+" if term > 0 else "-", str(abs(term)), "=", str(total)]
    return words


LONG_TASKS: dict[str, ListTask] = {task.name: task for task in (
    ListTask(name="copy_long", description="repeat a list of 20-60 names (repeats allowed)", multi_answer=False,
             instruction=lambda e: f"copy: {' '.join(e['items'])}", target=lambda e, rng: list(e["items"]),
             valid=lambda e, t: t == e["items"], draw=_draw_long_list, source=SOURCE),
    ListTask(name="reverse_long", description="a list of 20-60 names in reverse order", multi_answer=False,
             instruction=lambda e: f"reverse: {' '.join(e['items'])}", target=lambda e, rng: e["items"][::-1],
             valid=lambda e, t: t == e["items"][::-1], draw=_draw_long_list, source=SOURCE),
    ListTask(name="sort_long", description="a list of 20-60 names in alphabetical order", multi_answer=False,
             instruction=lambda e: f"sort: {' '.join(e['items'])}", target=lambda e, rng: sorted(e["items"]),
             valid=lambda e, t: t == sorted(e["items"]), draw=_draw_long_list, source=SOURCE),
    ListTask(name="shuffle_long", description="the same 20-60 names in any other order", multi_answer=True,
             instruction=lambda e: f"shuffle: {' '.join(e['items'])}", target=lambda e, rng: _shuffled(e["items"], rng),
             valid=lambda e, t: sorted(t) == sorted(e["items"]) and t != e["items"], draw=_draw_long_list,
             source=SOURCE),
    ListTask(name="latin_square_long", description="any 5x5 or 6x6 Latin square on the given symbols, rows split by /",
             multi_answer=True, instruction=lambda e: f"latin square: {' '.join(e['symbols'])}",
             draw=lambda rng: {"symbols": rng.sample(SYMBOLS, rng.choice((5, 6)))},
             target=_latin_long_target, valid=_latin_valid, source=SOURCE),
    # Whitespace does not count: "7+3=10" is the same answer as "7 + 3 = 10".
    ListTask(name="chain_sum_long", description="a running sum of 18-35 one-digit terms, each partial sum written out",
             multi_answer=False, instruction=_chain_prompt, target=lambda e, rng: _chain_steps(e),
             valid=lambda e, t: "".join(t) == "".join(_chain_steps(e)), draw=_draw_chain, source=SOURCE),
)}
