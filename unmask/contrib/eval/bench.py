"""``bench``: one grid built from flags (every combination of policies, stops and caches on the tasks, at one
gen length), run by :mod:`unmask.contrib.eval.runner`, with a ``task="mean"`` row per combination.

The baseline is the first combination; metrics and speedups are the runner's.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

from unmask.contrib.eval.runner import Cell, Grid, check_components, run_grid
from unmask.core.types import DecodeConfig

__all__ = ["bench", "bench_grid", "format_table"]


def bench(
    model: Any,
    tokenizer: Any,
    *,
    tasks: Sequence[str],
    n: int,
    seed: int,
    policies: Sequence[Any] = ("topk",),
    stops: Sequence[Any] = ("none",),
    caches: Sequence[Any] = ("none",),
    config: DecodeConfig = DecodeConfig(gen_length=64, block_length=32),
    batch_size: int = 32,
    progress: bool = True,
    model_name: str = "model",
    chat: bool | None = None,
    combinations: Sequence[tuple[Any, Any, Any]] | None = None,
    constraint: str = "none",
) -> list[dict[str, Any]]:
    """One row per (policy, stop, cache, task), plus a ``task="mean"`` row per combination: every one of
    policies x stops x caches, or exactly the (policy, stop, cache) ``combinations``; every decode under
    ``constraint`` (a spec; "none": unconstrained)."""
    from unmask.contrib.eval.report import mean_rows

    grid = bench_grid(tasks=tasks, n=n, seed=seed, policies=policies, stops=stops, caches=caches, config=config,
                      batch_size=batch_size, model_name=model_name, chat=chat, combinations=combinations,
                      constraint=constraint)
    rows = run_grid(grid, model, tokenizer, progress=progress)
    means = {(m["policy"], m["stop"], m["cache"]): m for m in mean_rows(rows)}
    ordered = []
    for key in dict.fromkeys((row["policy"], row["stop"], row["cache"]) for row in rows):
        ordered += [row for row in rows if (row["policy"], row["stop"], row["cache"]) == key] + [means[key]]
    return ordered


def bench_grid(*, tasks: Sequence[str], n: int, seed: int, policies: Sequence[Any], stops: Sequence[Any],
               caches: Sequence[Any], config: DecodeConfig, batch_size: int, model_name: str = "model",
               chat: bool | None = None, combinations: Sequence[tuple[Any, Any, Any]] | None = None,
               constraint: str = "none") -> Grid:
    """The grid ``bench`` runs: components as spec strings, the first combination as the baseline."""
    if combinations is None:
        combinations = list(itertools.product(policies, stops, caches))
    combinations = [tuple(_spec_text(spec) for spec in combination) for combination in combinations]
    if not combinations:
        raise ValueError("combinations is empty: give at least one (policy, stop, cache)")
    check_components(*zip(*combinations), constraints=[constraint])
    cells = tuple(Cell(task, p, s, c, config.gen_length, constraint) for p, s, c in combinations for task in tasks)
    baseline = {**dict(zip(("policy", "stop", "cache"), combinations[0])), "constraint": constraint}
    return Grid(name="bench", model=model_name, tasks=tuple(tasks), n=n, seed=seed,
                block_length=config.num_block_tokens, batch_size=batch_size, baseline=baseline, cells=cells,
                steps=config.steps, temperature=config.temperature, decode_seed=config.seed, chat=chat)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the main metrics."""
    columns = ["policy", "stop", "cache", "task", "n", "accuracy", "nfe_mean", "tokens_per_forward", "recomputed_mean",
               "wall_s", "tokens_per_s", "nfe_speedup", "wall_speedup"]
    if any("constraint" in row for row in rows):
        columns.insert(3, "constraint")
        rows = [{"constraint": "none", **row} for row in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _spec_text(spec: Any) -> str:
    if spec is None:
        return "none"
    if not isinstance(spec, str):
        raise TypeError(f"bench takes components as spec strings (rows name them), got {spec!r}")
    return spec
