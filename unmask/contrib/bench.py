"""Decode task sample sets with every combination of components, in one process, and score them.

Metrics: ``accuracy`` (the task's exact scorer), ``nfe_mean`` (forwards per sample),
``tokens_per_forward`` (canvas positions decided per forward: gen_length / NFE, 1.0 for one token per
step), ``tokens_per_s`` (answer tokens, EOS excluded, per wall second), ``wall_s``, and the speedups
``nfe_speedup`` / ``wall_speedup`` against the first combination (the baseline) on the same task.
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Any, Sequence

import torch
from attrs import define, field

from unmask.contrib.tasks import samples, score
from unmask.contrib.transformers import decode_answers, encode_prompts
from unmask.core.engine import decode, pad_prompts
from unmask.core.spec import parse_spec
from unmask.core.types import DecodeConfig
from unmask.strategies.oracle import OraclePolicy

__all__ = ["bench", "run_cell", "cell_metrics", "mean_row", "speedups", "format_table", "aup", "CellRun"]


def bench(
    model: Any,
    tokenizer: Any,
    *,
    tasks: Sequence[str],
    n: int,
    seed: int,
    policies: Sequence[Any] = ("topk",),
    stops: Sequence[Any] = (None,),
    caches: Sequence[Any] = ("none",),
    config: DecodeConfig = DecodeConfig(gen_length=64, block_length=32),
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per (policy, stop, cache, task), plus a ``task="mean"`` row per combination.

    ``oracle`` is decoded against the vanilla (``topk``, one token per step) output of the same batch.
    """
    from tqdm import tqdm

    check_components(policies, stops, caches)
    sets = {task: samples(task, n, seed) for task in tasks}
    combinations = list(itertools.product(policies, stops, caches))
    total = len(combinations) * sum(len(items) for items in sets.values())
    bar = tqdm(total=total, desc="bench", file=sys.stderr, disable=not progress, unit="sample")
    references: dict[Any, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    for policy, stop, cache in combinations:
        per_task = []
        for task, items in sets.items():
            run = run_cell(model, tokenizer, items, policy=policy, stop=stop, cache=cache, config=config,
                           batch_size=batch_size, references=references, on_batch=bar.update)
            per_task.append({"policy": _spec_text(policy), "stop": _spec_text(stop), "cache": _spec_text(cache),
                             "task": task, **cell_metrics(run, config), "seed": seed, "components": run.components})
        rows.extend(per_task)
        rows.append(mean_row(per_task))
    bar.close()
    baseline = {row["task"]: row for row in rows[: len(rows) // len(combinations)]}
    for row in rows:
        row.update(speedups(row, baseline[row["task"]]))
    return rows


@define
class CellRun:
    """Per-sample outcomes of decoding one sample set with one combination of components."""

    correct: list[bool] = field(factory=list)
    nfe: list[int] = field(factory=list)
    answer_tokens: list[int] = field(factory=list)
    wall_s: float = 0.0
    components: dict[str, Any] = field(factory=dict)
    first: dict[str, Any] = field(factory=dict)  # the first sample: answer and commit step of each position


def run_cell(
    model: Any, tokenizer: Any, items: Sequence[Any], *, policy: Any, stop: Any, cache: Any, config: DecodeConfig,
    batch_size: int, references: dict[Any, torch.Tensor] | None = None, on_batch: Any = None,
) -> CellRun:
    """Decode ``items`` in batches and score them; ``references`` caches oracle references across calls."""
    run = CellRun()
    references = {} if references is None else references
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        input_ids, attention_mask = pad_prompts(
            encode_prompts(tokenizer, [s.prompt for s in batch], chat=False), model.eos_token_id
        )
        chosen = policy
        key = (tuple((s.task, s.seed) for s in batch), config.gen_length, config.num_block_tokens)
        if _is_oracle(policy):
            if key not in references:
                vanilla = DecodeConfig(gen_length=config.gen_length, block_length=config.block_length,
                                       mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id)
                references[key] = decode(model, input_ids, attention_mask=attention_mask, config=vanilla).tokens
            chosen = OraclePolicy(reference=references[key])
        result = decode(model, input_ids, attention_mask=attention_mask, config=config,
                        policy=chosen, stop=stop, cache=cache)
        if _is_vanilla(policy, stop, cache, config):  # the oracle's reference: no need to decode it again
            references[key] = result.tokens
        answers = decode_answers(tokenizer, result)
        run.correct += [score(s, a) for s, a in zip(batch, answers)]
        run.nfe += result.nfe.tolist()
        run.answer_tokens += result.answer_lengths.tolist()
        run.wall_s += result.wall_s
        run.components = result.components
        if not run.first:
            run.first = {"seed": batch[0].seed, "answer": answers[0], "tokens": result.tokens[0].tolist(),
                         "commit_step": result.commit_step[0].tolist()}
        if on_batch is not None:
            on_batch(len(batch))
    return run


def cell_metrics(run: CellRun, config: DecodeConfig) -> dict[str, Any]:
    count, nfe = len(run.nfe), sum(run.nfe)
    return {
        "n": count, "accuracy": round(100 * sum(run.correct) / count, 2), "nfe_mean": round(nfe / count, 2),
        "tokens_per_forward": round(config.gen_length * count / nfe, 3), "wall_s": round(run.wall_s, 3),
        "tokens_per_s": round(sum(run.answer_tokens) / run.wall_s, 2) if run.wall_s else None,
        "gen_length": config.gen_length, "block_length": config.num_block_tokens, "steps": config.num_steps,
    }


def speedups(row: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """NFE and wall-clock speedups of ``row`` against ``baseline`` (same samples, same run)."""
    return {"nfe_speedup": round(baseline["nfe_mean"] / row["nfe_mean"], 3),
            "wall_speedup": round(baseline["wall_s"] / row["wall_s"], 3) if row["wall_s"] else None}


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


def mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``task="mean"`` row of one combination's per-task rows: accuracy averaged over tasks, NFE and
    speed over all samples."""
    count = sum(r["n"] for r in rows)
    nfe = sum(r["nfe_mean"] * r["n"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    tokens = sum((r["tokens_per_s"] or 0) * r["wall_s"] for r in rows)
    return {
        **{k: rows[0][k] for k in ("policy", "stop", "cache")}, "task": "mean", "n": count,
        "accuracy": round(sum(r["accuracy"] for r in rows) / len(rows), 2),  # mean over tasks
        "nfe_mean": round(nfe / count, 2), "tokens_per_forward": round(rows[0]["gen_length"] * count / nfe, 3),
        "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2) if wall else None,
        **{k: rows[0][k] for k in ("gen_length", "block_length", "steps", "seed", "components")},
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the main metrics."""
    columns = ["policy", "stop", "cache", "task", "n", "accuracy", "nfe_mean", "tokens_per_forward", "wall_s",
               "tokens_per_s", "nfe_speedup", "wall_speedup"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def check_policy(spec: Any) -> None:
    """Build ``spec`` once so that a bad one fails before any decoding (the oracle: its name only, since it is
    built per batch against the vanilla output)."""
    from unmask.core.plugins import create, registry

    if _is_oracle(spec):
        registry().get("policies", parse_spec(spec)[0])
    else:
        create("policies", spec)


def check_components(policies: Sequence[Any], stops: Sequence[Any], caches: Sequence[Any]) -> None:
    """Every policy, stop and cache builds (a bad spec fails before the model loads or decoding starts)."""
    from unmask.core.plugins import create

    for policy in policies:
        check_policy(policy)
    for stop in stops:
        if stop not in (None, "none"):
            create("stops", stop)
    for cache in caches:
        create("caches", cache)


def _is_oracle(policy: Any) -> bool:
    return isinstance(policy, str) and "+" not in policy and parse_spec(policy)[0] == "oracle"


def _is_vanilla(policy: Any, stop: Any, cache: Any, config: DecodeConfig) -> bool:
    return (policy == "topk" and stop in (None, "none") and cache == "none" and config.num_steps == config.gen_length
            and config.temperature == 0)


def _spec_text(spec: Any) -> str:
    return "none" if spec is None else spec if isinstance(spec, str) else type(spec).__name__
