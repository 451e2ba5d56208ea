"""Reports of ablation rows: a Markdown table with AUP per policy family, and plots (``unmask[plots]``).

Plots: accuracy against NFE per task with the Pareto front, and the decoding order of one sample (which
position was committed at which step).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from unmask._files import write_atomically
from unmask.contrib.eval.runner import mean_row, speedups
from unmask.core.spec import parse_spec

__all__ = ["markdown_report", "mean_rows", "aup", "aup_rows", "pareto_front", "plot_pareto", "plot_commit_order"]

COLUMNS = ("task", "policy", "stop", "cache", "gen_length", "accuracy", "nfe_mean", "nfe_p50", "nfe_p90",
           "tokens_per_forward", "tokens_per_s", "wall_s", "nfe_speedup", "wall_speedup")


def mean_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``task="mean"`` row per (policy, stop, cache, gen length): accuracy averaged over tasks; speedups
    against the baseline's mean row of the same gen length."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["policy"], row["stop"], row["cache"], row["gen_length"])].append(row)
    means = [mean_row(group) for group in groups.values()]
    for mean in means:
        mean.update(speedups(mean, next((m for m in means if m["baseline"] and m["gen_length"] == mean["gen_length"]),
                                        None)))
    return means


def aup(points: Sequence[tuple[float, float]], *, window: float = 5.0) -> float:
    """Accuracy under parallelism (d3LLM) of (tokens per forward, accuracy %) points.

    Points more than ``window`` accuracy points below the best are dropped; the rest, sorted by tokens per
    forward, are integrated with the trapezoid rule, accuracy weighted by min(exp(-3 (1 - a / a_max)), 1),
    starting with the rectangle TPF_1 * acc_1.
    """
    if not points:
        raise ValueError("aup needs at least one (tokens_per_forward, accuracy) point")
    best = max(accuracy for _, accuracy in points)
    kept = sorted((tpf, acc) for tpf, acc in points if acc >= best - window)

    def weighted(accuracy: float) -> float:
        return accuracy * min(math.exp(-3 * (1 - accuracy / best)), 1.0) if best > 0 else 0.0

    area = kept[0][0] * kept[0][1]
    for (tpf0, acc0), (tpf1, acc1) in zip(kept, kept[1:]):
        area += 0.5 * (tpf1 - tpf0) * (weighted(acc1) + weighted(acc0))
    return area


def aup_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """AUP of each policy family (policy name, any parameters) per task, stop, cache and gen length."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        family = row["policy"] if "+" in row["policy"] else parse_spec(row["policy"])[0]
        groups[(row["task"], family, row["stop"], row["cache"], row["gen_length"])].append(
            (row["tokens_per_forward"], row["accuracy"]))
    return [{"task": task, "family": family, "stop": stop, "cache": cache, "gen_length": gen_length,
             "points": len(points), "aup": round(aup(points), 2)}
            for (task, family, stop, cache, gen_length), points in sorted(groups.items())]


def markdown_report(rows: Sequence[dict[str, Any]], *, title: str = "Results", command: str | None = None) -> str:
    everything = [*rows, *mean_rows(rows)]
    lines = [f"# {title}", ""]
    if command:
        lines += ["Regenerate with:", "", f"    {command}", ""]
    if rows:
        first = rows[0]
        lines += [f"Model `{first['model']}` (weights sha256 `{first['model_sha256'][:12]}`), "
                  f"{first['n']} samples per task from seed {first['seed']}, block {first['block_length']}, "
                  f"temperature 0; unmask {first['versions']['unmask']}, torch {first['versions']['torch']}; "
                  f"{first['machine']['cpu']}, {first['machine']['threads']} threads"
                  f"{', ' + first['machine']['gpu'] if first['machine'].get('gpu') else ''}.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    ordered = sorted(everything, key=lambda r: (r["task"] == "mean", r["task"], r["gen_length"], r["stop"],
                                                r["cache"], -r["nfe_mean"]))
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |" for row in ordered]
    lines += ["", "AUP (accuracy under parallelism) per policy family:", "",
              "| task | family | stop | cache | gen_length | points | aup |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['family']} | {r['stop']} | {r['cache']} | {r['gen_length']} | {r['points']} | "
              f"{r['aup']} |" for r in aup_rows(everything)]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (nfe, accuracy) points no other point beats on both: fewer or equal NFE and higher accuracy."""
    front, best = [], float("-inf")
    for nfe, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((nfe, accuracy))
            best = accuracy
    return front


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy against NFE, one panel per task (and the mean), Pareto front drawn through the best points."""
    plt = _pyplot()
    everything = [*rows, *mean_rows(rows)]
    tasks = sorted({r["task"] for r in everything}, key=lambda t: (t == "mean", t))
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        subset = [r for r in everything if r["task"] == task]
        for row in subset:
            label = f"{row['policy']} {row['stop'] if row['stop'] != 'none' else ''} {row['cache'] if row['cache'] != 'none' else ''}"
            axis.scatter(row["nfe_mean"], row["accuracy"], s=18)
            axis.annotate(" ".join(label.split()), (row["nfe_mean"], row["accuracy"]), fontsize=6, alpha=0.8)
        front = pareto_front([(r["nfe_mean"], r["accuracy"]) for r in subset])
        axis.plot(*zip(*front), color="black", linewidth=1, label="Pareto front")
        axis.set_xscale("log")
        axis.set_title(task)
        axis.set_xlabel("NFE per sample (log)")
        axis.set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def plot_commit_order(row: dict[str, Any], path: str | Path, *, tokenizer: Any = None) -> Path:
    """The step at which each position of one sample was committed: a bar per position, cut positions blank."""
    plt = _pyplot()
    sample = row["first_sample"]
    steps = sample["commit_step"]
    committed = [i for i, s in enumerate(steps) if s >= 0]
    width = min(len(steps), committed[-1] + 2) if committed else len(steps)  # up to just past the last commit
    steps = steps[:width]
    figure, axis = plt.subplots(figsize=(max(6, 0.22 * width), 3))
    colors = ["tab:blue" if s >= 0 else "white" for s in steps]
    axis.bar(range(width), [max(s, 0) + 1 for s in steps], color=colors, edgecolor="grey", linewidth=0.3)
    if tokenizer is not None:
        labels = [tokenizer.decode([t]).strip() or "␣" for t in sample["tokens"][:width]]
        axis.set_xticks(range(width), labels, fontsize=6, rotation=90)
    axis.set_xlabel("answer position")
    axis.set_ylabel("committed at step")
    axis.set_title(f"{row['task']} #{sample['seed']}: {row['policy']} {row['stop']} ({row['nfe_mean']} NFE mean)",
                   fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'unmask[plots]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | Path) -> Path:
    try:
        return write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=130))
    finally:
        _pyplot().close(figure)
