"""Decode task sample sets with every combination of components, in one process, and score them.

Metrics: ``accuracy`` (the task's exact scorer), ``nfe_mean`` (forwards per sample),
``tokens_per_forward`` (canvas positions decided per forward: gen_length / NFE, 1.0 for one token per
step), ``tokens_per_s`` (answer tokens, EOS excluded, per wall second) and ``wall_s``.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any, Sequence

import torch

from unmask.contrib.tasks import samples, score
from unmask.contrib.transformers import decode_answers, encode_prompts
from unmask.core.engine import decode, pad_prompts
from unmask.core.spec import parse_spec
from unmask.core.types import DecodeConfig
from unmask.strategies.oracle import OraclePolicy

__all__ = ["bench", "format_table"]


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

    sets = {task: samples(task, n, seed) for task in tasks}
    batches = {
        task: [items[i:i + batch_size] for i in range(0, len(items), batch_size)] for task, items in sets.items()
    }
    combinations = list(itertools.product(policies, stops, caches))
    total = len(combinations) * sum(len(b) for b in batches.values())
    bar = tqdm(total=total, desc="bench", file=sys.stderr, disable=not progress, unit="batch")
    references: dict[tuple[str, int], torch.Tensor] = {}
    rows = []
    for policy, stop, cache in combinations:
        per_task = []
        for task, task_batches in batches.items():
            correct, nfe, answer_tokens, wall = 0, 0, 0, 0.0
            for index, batch in enumerate(task_batches):
                input_ids, attention_mask = pad_prompts(
                    encode_prompts(tokenizer, [s.prompt for s in batch], chat=False), model.eos_token_id
                )
                chosen = policy
                if _is_oracle(policy):
                    key = (task, index)
                    if key not in references:
                        vanilla = DecodeConfig(gen_length=config.gen_length, block_length=config.block_length,
                                               mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id)
                        references[key] = decode(model, input_ids, attention_mask=attention_mask, config=vanilla).tokens
                    chosen = OraclePolicy(reference=references[key])
                result = decode(model, input_ids, attention_mask=attention_mask, config=config,
                                policy=chosen, stop=stop, cache=cache)
                answers = decode_answers(tokenizer, result)
                correct += sum(score(s, a) for s, a in zip(batch, answers))
                nfe += int(result.nfe.sum())
                answer_tokens += int(result.answer_lengths.sum())
                wall += result.wall_s
                bar.update()
            row = {
                "policy": _spec_text(policy), "stop": _spec_text(stop), "cache": _spec_text(cache), "task": task,
                "n": len(sets[task]), "accuracy": round(100 * correct / len(sets[task]), 2),
                "nfe_mean": round(nfe / len(sets[task]), 2),
                "tokens_per_forward": round(config.gen_length * len(sets[task]) / nfe, 3),
                "wall_s": round(wall, 3), "tokens_per_s": round(answer_tokens / wall, 2) if wall else None,
                "gen_length": config.gen_length, "block_length": config.num_block_tokens, "steps": config.num_steps,
                "seed": seed, "components": result.components,
            }
            per_task.append(row)
        rows.extend(per_task)
        rows.append(_mean_row(per_task, config))
    bar.close()
    return rows


def _mean_row(rows: Sequence[dict[str, Any]], config: DecodeConfig) -> dict[str, Any]:
    count = sum(r["n"] for r in rows)
    nfe = sum(r["nfe_mean"] * r["n"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    tokens = sum((r["tokens_per_s"] or 0) * r["wall_s"] for r in rows)
    return {
        **{k: rows[0][k] for k in ("policy", "stop", "cache")}, "task": "mean", "n": count,
        "accuracy": round(sum(r["accuracy"] for r in rows) / len(rows), 2),  # mean over tasks
        "nfe_mean": round(nfe / count, 2), "tokens_per_forward": round(config.gen_length * count / nfe, 3),
        "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2) if wall else None,
        **{k: rows[0][k] for k in ("gen_length", "block_length", "steps", "seed", "components")},
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the main metrics."""
    columns = ["policy", "stop", "cache", "task", "n", "accuracy", "nfe_mean", "tokens_per_forward", "wall_s",
               "tokens_per_s"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _is_oracle(policy: Any) -> bool:
    return isinstance(policy, str) and "+" not in policy and parse_spec(policy)[0] == "oracle"


def _spec_text(spec: Any) -> str:
    return "none" if spec is None else spec if isinstance(spec, str) else type(spec).__name__
