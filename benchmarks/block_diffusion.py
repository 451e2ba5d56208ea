"""A block-diffusion model beside the bidirectional model it was fine-tuned from, on the same held-out items.

    python benchmarks/block_diffusion.py --block-model reference-block \
        --out benchmarks/results/block_diffusion.json
    python benchmarks/block_diffusion.py --block-model reference-block --policies threshold:tau=0.9 \
        --out benchmarks/results/block_diffusion_threshold.json

Both models decode the suite's evaluation prompts (``--n`` per task, gen 128, block 32, stop ``none`` so both
decode every block) with topk, threshold 0.9 and Learn2PD, and with EoTP; the block model with its exact
cache, the bidirectional one without a cache and with Fast-dLLM's dual cache. Speedups are wall time
against the bidirectional model's threshold 0.9 without a cache, all in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from unmask._files import write_text_atomically
from unmask.contrib.eval.bench import bench
from unmask.contrib.models.transformers import load
from unmask.contrib.tasks import DEFAULT_TASKS
from unmask.core.types import DecodeConfig

BIDIRECTIONAL = [("topk", "none", "none"), ("threshold:tau=0.9", "none", "none"), ("threshold:tau=0.9", "none", "dual"),
                 ("learn2pd", "none", "none"), ("topk", "eotp", "none"), ("threshold:tau=0.9", "eotp", "dual")]
BLOCK = [("topk", "none", "exact"), ("threshold:tau=0.9", "none", "exact"), ("threshold:tau=0.9", "none", "none"),
         ("learn2pd", "none", "exact"), ("topk", "eotp", "exact"), ("threshold:tau=0.9", "eotp", "exact")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-model", required=True, help="the block-diffusion model (a name or a directory)")
    parser.add_argument("--model", default="reference", help="the bidirectional model (default: reference)")
    parser.add_argument("--n", type=int, default=50, help="samples per task (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="first sample seed (default: 0)")
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="rows per decode (default: 32, as unmask bench); a block model's rows of any prompt "
                             "lengths decode together")
    parser.add_argument("--policies", default=None,
                        help="comma-separated subset of topk, threshold:tau=0.9, learn2pd (default: all three)")
    parser.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    args = parser.parse_args()
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be at least 1")

    known = {policy for policy, _, _ in BIDIRECTIONAL + BLOCK}
    chosen = known if args.policies is None else set(args.policies.split(","))
    if not chosen <= known or "threshold:tau=0.9" not in chosen:
        parser.error(f"--policies: a subset of {', '.join(sorted(known))} that holds threshold:tau=0.9 (the baseline)")
    config = DecodeConfig(gen_length=args.gen_length, block_length=args.block_length)
    rows = []
    for name, combinations in ((args.model, BIDIRECTIONAL), (args.block_model, BLOCK)):
        combinations = [combination for combination in combinations if combination[0] in chosen]
        model, tokenizer = load(name)
        found = bench(model, tokenizer, tasks=DEFAULT_TASKS, n=args.n, seed=args.seed, combinations=combinations,
                      config=config, batch_size=args.batch_size, model_name=name)
        rows += [{**row, "model": name} for row in found]
    means = [row for row in rows if row["task"] == "mean"]
    baseline = next(row for row in means if row["model"] == args.model and row["policy"] == "threshold:tau=0.9"
                    and row["stop"] == "none" and row["cache"] == "none")
    for row in rows:
        mean = row["task"] == "mean"
        row["speedup_vs_bidirectional_threshold"] = round(baseline["wall_s"] / row["wall_s"], 2) if mean else None

    print(f"gen length {args.gen_length}, block {args.block_length}, {args.n} samples x {len(DEFAULT_TASKS)} tasks, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| model | policy | stop | cache | accuracy | NFE | wall s | speedup |\n|---|---|---|---|---|---|---|---|")
    for row in means:
        print(f"| {row['model']} | {row['policy']} | {row['stop']} | {row['cache']} | {row['accuracy']} | "
              f"{row['nfe_mean']} | {row['wall_s']} | {row['speedup_vs_bidirectional_threshold']:.2f}x |")
    tasks = sorted({row["task"] for row in rows} - {"mean"}, key=list(DEFAULT_TASKS).index)
    if "topk" in chosen:
        print_vanilla_accuracy(rows, tasks, (args.model, args.block_model))
    if args.out:
        write_text_atomically(args.out, json.dumps(rows, indent=2))


def print_vanilla_accuracy(rows: list[dict], tasks: list[str], models: tuple[str, str]) -> None:
    print("\nAccuracy per task (topk, stop none):\n\n| task | " + " | ".join(tasks) + " |\n|---|"
          + "---|" * len(tasks))
    for name in models:
        scores = {row["task"]: row["accuracy"] for row in rows
                  if row["model"] == name and row["policy"] == "topk" and row["stop"] == "none"}
        print(f"| {name} | " + " | ".join(f"{scores.get(task, '')}" for task in tasks) + " |")


if __name__ == "__main__":
    main()
