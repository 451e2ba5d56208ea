"""Reports of ablation rows: a Markdown table, tokens per forward per task, AUP and ParallelBench's PBx per
policy family, and plots (``unmask[plots]``).

A policy's family is its spec without ``tau``: a threshold sweep is one family, each Learn2PD filter another.
Plots: accuracy against NFE per task, each family's sweep drawn as a curve, with the Pareto front; and per
task the decoding order of its first sample under every policy (which step committed which position).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from unmask._files import write_atomically
from unmask.contrib.eval.runner import mean_row, speedups
from unmask.core.spec import format_spec, parse_spec

__all__ = ["markdown_report", "with_speedups", "mean_rows", "family", "aup", "aup_rows", "pb_score", "pb_rows",
           "verdict_rows", "pareto_front",
           "plot_pareto", "plot_commit_order"]

COLUMNS = ("task", "policy", "stop", "cache", "gen_length", "accuracy", "nfe_mean", "nfe_p50", "nfe_p90",
           "tokens_per_forward", "recomputed_mean", "tokens_per_s", "wall_s", "nfe_speedup", "wall_speedup")


def with_speedups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their speedups taken again against the baseline row of their task and gen length among
    ``rows``: a baseline cell run again (its rows deleted from the JSONL, then ``ablate`` resumed) changes
    the ratios of every row stored before it."""
    bases = {(r["task"], r["gen_length"]): r for r in rows if r.get("baseline")}
    return [{**row, **speedups(row, bases.get((row["task"], row["gen_length"])))} for row in rows]


def mean_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``task="mean"`` row per (policy, stop, cache, constraint, gen length): accuracy averaged over tasks;
    speedups against the baseline's mean row of the same gen length."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["policy"], row["stop"], row["cache"], row.get("constraint"), row["gen_length"])].append(row)
    means = [mean_row(group) for group in groups.values()]
    for mean in means:
        mean.update(speedups(mean, next((m for m in means if m["baseline"] and m["gen_length"] == mean["gen_length"]),
                                        None)))
    return means


# The parameters along which the built-in policies trade accuracy for parallelism: a threshold's tau, the
# entropy bound h, FreeDave's number of drafts.
SWEEP_PARAMETERS = ("tau", "h", "draft_steps")


def family(policy: str) -> str:
    """The policy spec without its sweep parameter (``SWEEP_PARAMETERS``): the points of one sweep share it."""
    if "+" in policy:
        return policy
    name, params = parse_spec(policy)
    return format_spec(name, {k: v for k, v in params.items() if k not in SWEEP_PARAMETERS})


def _label(row: dict[str, Any], policy: str | None = None) -> str:
    parts = [policy or row["policy"]] + [f"{k} {row[k]}" for k in ("stop", "cache", "constraint")
                                         if row.get(k, "none") != "none"]
    return " ".join(parts)


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
    """AUP of each policy family (over its tau) per task, stop, cache and gen length."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], family(row["policy"]), row["stop"], row["cache"], row["gen_length"])].append(
            (row["tokens_per_forward"], row["accuracy"]))
    return [{"task": task, "family": family, "stop": stop, "cache": cache, "gen_length": gen_length,
             "points": len(points), "aup": round(aup(points), 2)}
            for (task, family, stop, cache, gen_length), points in sorted(groups.items())]


# ParallelBench's leaderboard levels (mean score over tasks, %), ranked by PB80.
PB_LEVELS = (90, 80, 70, 60)
# Families whose tokens per step is the configured k (ParallelBench's top-k): their PBx is read off the sweep's
# points; every other family's measured tokens per forward is interpolated between two points.
DISCRETE_FAMILIES = ("topk", "random")


def pb_score(points: Sequence[tuple[float, float]], level: float, *, discrete: bool) -> float | None:
    """ParallelBench's PBx of one family's sweep (shared/METHODS.md M): the most tokens per step at which the
    mean score over tasks stays at or above ``level``, from (tokens per step, mean score %) points; None where
    no point qualifies. A discrete family takes the best qualifying point; an adaptive one its fastest point
    if it qualifies, else interpolates inside the first pair from the fast end that straddles the level."""
    if not points:
        raise ValueError("pb_score needs at least one (tokens per step, score) point")
    best: dict[float, float] = {}
    for tps, score in points:  # equal tokens per step: the best score
        best[tps] = max(score, best.get(tps, -math.inf))
    ordered = sorted(best.items())
    if discrete:
        return max((tps for tps, score in ordered if score >= level), default=None)
    if ordered[-1][1] >= level:
        return ordered[-1][0]
    for (tps_lo, score_lo), (tps_hi, score_hi) in reversed(list(zip(ordered, ordered[1:]))):
        if score_lo >= level > score_hi:
            return tps_lo + (score_lo - level) / (score_lo - score_hi) * (tps_hi - tps_lo)
    return None


def pb_rows(rows: Sequence[dict[str, Any]], levels: Sequence[float] = PB_LEVELS) -> list[dict[str, Any]]:
    """PBx at each of ``levels`` per policy family (over its sweep; a top-k family over k) per stop, cache and
    gen length: each configuration's score and tokens per step averaged over its tasks first."""
    configs: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["task"] != "mean":
            configs[(_pb_family(row["policy"]), row["stop"], row["cache"], row["gen_length"], row["policy"])].append(row)
    families: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for (name, stop, cache, gen_length, policy), group in configs.items():
        tps = (_nominal_k(policy, group[0]) if _discrete(policy)
               else sum(r["tokens_per_forward"] for r in group) / len(group))
        families[(name, stop, cache, gen_length)].append((tps, sum(r["accuracy"] for r in group) / len(group)))
    return [{"family": name, "stop": stop, "cache": cache, "gen_length": gen_length, "configs": len(points),
             **{f"pb{level:g}": pb_score(points, level, discrete=_discrete(name)) for level in levels}}
            for (name, stop, cache, gen_length), points in sorted(families.items())]


def _discrete(policy: str) -> bool:
    return "+" not in policy and parse_spec(policy)[0] in DISCRETE_FAMILIES


def _pb_family(policy: str) -> str:
    """A sweep's family: a top-k family spans its k too."""
    if not _discrete(policy):
        return family(policy)
    name, params = parse_spec(policy)
    return format_spec(name, {k: v for k, v in params.items() if k != "k"})


def _nominal_k(policy: str, row: dict[str, Any]) -> float:
    """A top-k configuration's tokens per step: its k, else the schedule's gen_length / steps."""
    k = parse_spec(policy)[1].get("k")
    return float(k) if k is not None else row["gen_length"] / (row.get("steps") or row["gen_length"])


def markdown_report(rows: Sequence[dict[str, Any]], *, title: str = "Results", command: str | None = None,
                    pb_levels: Sequence[float] = PB_LEVELS) -> str:
    rows = with_speedups(rows)
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
    lines += ["", "Tokens per forward (accuracy) per task:", "", *_per_task_table(everything)]
    lines += ["", "AUP (accuracy under parallelism) per policy family:", "",
              "| task | family | stop | cache | gen_length | points | aup |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['family']} | {r['stop']} | {r['cache']} | {r['gen_length']} | {r['points']} | "
              f"{r['aup']} |" for r in aup_rows(everything)]
    levels = [f"PB{level:g}" for level in pb_levels]
    lines += ["", "PBx (ParallelBench: the most tokens per step at which the mean accuracy over tasks stays at or "
                  "above x; - where no configuration does) per policy family:", "",
              "| family | stop | cache | gen_length | configs | " + " | ".join(levels) + " |",
              "|---|---|---|---|---|" + "---|" * len(levels)]
    lines += [f"| {r['family']} | {r['stop']} | {r['cache']} | {r['gen_length']} | {r['configs']} | "
              + " | ".join("-" if r[label.lower()] is None else f"{r[label.lower()]:.2f}" for label in levels) + " |"
              for r in pb_rows(rows, pb_levels)]
    verdicts = verdict_rows(everything)
    if verdicts:
        lines += ["", f"Wins and losses per task, against the baseline cell: the most accurate cell; among the cells "
                      f"within {TIE_POINTS:g} point of the baseline's accuracy, the fewest forwards and the shortest "
                      f"wall time; the cells more than {LOSS_POINTS:g} points below it:", "",
                  "| task | baseline | most accurate | fewest forwards | shortest wall time | losing |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['baseline']} | {r['most_accurate']} | {r['fewest_forwards']} | "
                  f"{r['shortest_wall']} | {r['losing']} |" for r in verdicts]
    return "\n".join(lines) + "\n"


# A cell "keeps" the baseline's accuracy within TIE_POINTS and "loses" below LOSS_POINTS (with 50 samples per
# task one sample is 2 points, so a single flipped answer is neither).
TIE_POINTS, LOSS_POINTS = 1.0, 3.0


def write_report(rows: Sequence[dict[str, Any]], *, title: str, command: str | None = None,
                 report: str | Path | None = None, plots: str | Path | None = None, tokenizer: Any = None,
                 pb_levels: Sequence[float] = PB_LEVELS) -> str:
    """The Markdown report of ``rows`` (written to ``report`` if given) with, given ``plots``, the Pareto plot
    and each task's commit-order plots there, linked from the report. Returns the report's text."""
    text = markdown_report(rows, title=title, command=command, pb_levels=pb_levels)
    if plots:
        folder = Path(plots)
        figures = [plot_pareto(rows, folder / "pareto.png")]
        for task in dict.fromkeys(r["task"] for r in rows):
            for gen_length in sorted({r["gen_length"] for r in rows}):
                group = sorted((r for r in rows if r["task"] == task and r["gen_length"] == gen_length),
                               key=lambda r: -r["nfe_mean"])
                figures.append(plot_commit_order(group, folder / f"order-{task}-{gen_length}.png", tokenizer=tokenizer))
        base = Path(report).parent if report else Path(".")
        text += "\n" + "\n".join(f"![{f.stem}]({os.path.relpath(f, base)})" for f in figures) + "\n"
    if report:
        write_atomically(report, lambda temporary: temporary.write_text(text))
    return text


def verdict_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and gen length with a baseline row: where each cell wins or loses against the baseline, as
    labelled cells (``policy stop X cache Y (accuracy, forwards or wall time)``)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["gen_length"])].append(row)
    verdicts = []
    for (task, gen_length), group in sorted(groups.items(), key=lambda item: (item[0][0] == "mean", item[0])):
        base = next((r for r in group if r.get("baseline")), None)
        if base is None:
            continue
        kept = [r for r in group if r["accuracy"] >= base["accuracy"] - TIE_POINTS]
        best = max(group, key=lambda r: (r["accuracy"], -r["nfe_mean"]))
        fewest = min(kept, key=lambda r: (r["nfe_mean"], -r["accuracy"]))
        fastest = min(kept, key=lambda r: (r["wall_s"], -r["accuracy"]))
        losing = sorted((r for r in group if r["accuracy"] < base["accuracy"] - LOSS_POINTS),
                        key=lambda r: r["accuracy"])
        verdicts.append({
            "task": task, "gen_length": gen_length, "baseline": f"{_label(base)} ({base['accuracy']:g})",
            "most_accurate": f"{_label(best)} ({best['accuracy']:g})",
            "fewest_forwards": f"{_label(fewest)} ({fewest['accuracy']:g}, {fewest['nfe_mean']:g} forwards)",
            "shortest_wall": f"{_label(fastest)} ({fastest['accuracy']:g}, {fastest['wall_s']:g} s)",
            "losing": ", ".join(f"{_label(r)} ({r['accuracy']:g})" for r in losing) or "none"})
    return verdicts


def _per_task_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (t == "mean", t))
    cells: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        cells[(row["gen_length"], _label(row))][row["task"]] = row
    order = sorted(cells, key=lambda key: (key[0], -cells[key].get("mean", {}).get("tokens_per_forward", 0)))
    lines = ["| gen | policy | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for key in order:
        values = [cells[key].get(t) for t in tasks]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(
            "" if v is None else f"{v['tokens_per_forward']:.1f} ({v['accuracy']:g})" for v in values) + " |")
    return lines


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
    """Accuracy against NFE, one panel per task (and the mean): each family's sweep a curve, single policies
    points, and the Pareto front in black."""
    plt = _pyplot()
    everything = [*rows, *mean_rows(rows)]
    tasks = sorted({r["task"] for r in everything}, key=lambda t: (t == "mean", t))
    columns = min(4, len(tasks))
    lines = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.8 * lines), squeeze=False)
    for axis in axes.flat[len(tasks):]:
        axis.set_visible(False)
    for axis, task in zip(axes.flat, tasks):
        curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for row in (r for r in everything if r["task"] == task):
            curves[_label(row, family(row["policy"]))].append((row["nfe_mean"], row["accuracy"]))
        for label, points in sorted(curves.items()):
            points.sort()
            axis.plot(*zip(*points), marker="o", markersize=3, linewidth=1, label=label)
        front = pareto_front([p for points in curves.values() for p in points])
        axis.plot(*zip(*front), color="black", linewidth=0.8, linestyle=":", label="Pareto front")
        axis.set_xscale("log")
        axis.set_title(task)
        axis.set_xlabel("NFE per sample (log)")
        axis.set_ylabel("accuracy (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7)
    figure.tight_layout(rect=(0, 0.04 * math.ceil(len(labels) / 4) / lines, 1, 1))
    return _save(figure, path)


def plot_commit_order(rows: Sequence[dict[str, Any]], path: str | Path, *, tokenizer: Any = None) -> Path:
    """The first sample of one task under each row's policy: a line per policy, a cell per answer position
    holding the step that committed it (blank: cut by the stop criterion)."""
    plt = _pyplot()
    samples = [row["first_sample"] for row in rows]
    tasks = {row["task"] for row in rows}
    if len(tasks) != 1:
        raise ValueError(f"plot_commit_order draws one task's rows, got tasks {sorted(tasks)}")
    # The longest answer and its end-of-text token.
    length = len(samples[0]["commit_step"])
    width = min(length, max(_answer_length(x, tokenizer) for x in samples) + 1)
    steps = [[s if s >= 0 else math.nan for s in x["commit_step"][:width]] for x in samples]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.3 * width + 3), 0.35 * len(rows) + 1.4))
    image = axis.imshow(steps, aspect="auto", cmap="viridis_r", interpolation="nearest")
    for line, values in enumerate(steps):
        for position, value in enumerate(values):
            if not math.isnan(value):
                axis.text(position, line, int(value), ha="center", va="center", fontsize=5, color="white")
    axis.set_yticks(range(len(rows)), [f"{_label(r)} ({r['nfe_mean']} NFE)" for r in rows], fontsize=6)
    if tokenizer is not None:
        labels = [tokenizer.decode([t]).strip() or "␣" for t in samples[0]["tokens"][:width]]
        axis.set_xticks(range(width), labels, fontsize=6, rotation=90)
    axis.set_xlabel("answer position (tokens of the first policy's output)")
    figure.colorbar(image, ax=axis, label="committed at step", fraction=0.03)
    axis.set_title(f"{rows[0]['task']} #{samples[0]['seed']}: which step committed each position", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _answer_length(sample: dict[str, Any], tokenizer: Any) -> int:
    if "answer_length" in sample:
        return int(sample["answer_length"])
    # Rows from before unmask 0.2 record no length: find the first end-of-text token.
    eos = getattr(tokenizer, "eos_token_id", None)
    return next((i for i, token in enumerate(sample["tokens"]) if token == eos), len(sample["tokens"]))


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
