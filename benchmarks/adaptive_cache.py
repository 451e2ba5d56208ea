"""Caches against no cache on the bundled model (or ``--model DIR``): accuracy, forwards, position-layers
recomputed and wall time, per task and overall, on held-out items.

    python benchmarks/adaptive_cache.py --caches "none;dual;elastic;elastic:track_num=4" \\
        --gen-length 128 --n 50 --out benchmarks/results/adaptive_cache.json
    python benchmarks/adaptive_cache.py --random-weights llama,qwen2   # LLaDA's and Dream's architectures

The caches take turns batch by batch (every cache decodes batch 1, then batch 2, ...), so a slow spell of
the machine falls on all of them alike; speedup = wall time without a cache / with it, from the same run.
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from unmask._files import write_text_atomically
from unmask.contrib.eval.runner import CellRun, cell_metrics, machine, mean_row, run_cell, speedups
from unmask.contrib.models.transformers import load
from unmask.contrib.tasks import DEFAULT_TASKS, samples
from unmask.core.types import DecodeConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caches", default="none;dual;elastic", help="cache specs separated by ';', the first is "
                        "the baseline (default: none;dual;elastic)")
    parser.add_argument("--policy", default="threshold:tau=0.9")
    parser.add_argument("--stop", default="none")
    parser.add_argument("--n", type=int, default=50, help="held-out items per task (default: 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--model", default="reference", help="a registered model or a directory (default: reference)")
    parser.add_argument("--out", type=Path, default=None, help="write every row as JSON here")
    parser.add_argument("--random-weights", default=None, metavar="ARCHITECTURES",
                        help="instead: tiny random models of these architectures (llama: LLaDA's, qwen2: Dream's, "
                             "logits shifted), each cache's token agreement with no cache and share recomputed")
    args = parser.parse_args()
    if args.random_weights:
        return random_weights(args.random_weights.split(","), args.caches.split(";"), args.gen_length,
                              args.block_length, args.policy)

    model, tokenizer = load(args.model)
    config = DecodeConfig(gen_length=args.gen_length, block_length=args.block_length)
    caches, tasks = args.caches.split(";"), args.tasks.split(",")
    runs = {(cache, task): CellRun() for cache in caches for task in tasks}
    bar = tqdm(total=len(tasks) * args.n, unit="item", file=sys.stderr)
    for task in tasks:
        items = samples(task, args.n, args.seed)
        for start in range(0, len(items), args.batch_size):
            batch = items[start:start + args.batch_size]
            for cache in caches:
                part = run_cell(model, tokenizer, batch, policy=args.policy, stop=args.stop, cache=cache, config=config,
                                batch_size=args.batch_size)
                _extend(runs[cache, task], part)
            bar.update(len(batch))
    bar.close()
    rows = []
    for cache in caches:
        per_task = [{"task": task, "policy": args.policy, "stop": args.stop, "cache": cache,
                     **cell_metrics(runs[cache, task], config)} for task in tasks]
        rows += per_task + [mean_row(per_task)]
    base = {row["task"]: row for row in rows if row["cache"] == caches[0]}
    for row in rows:
        row.update(speedups(row, base[row["task"]]))
    print(f"policy {args.policy}, stop {args.stop}, gen {args.gen_length}, block {args.block_length}, {args.n} items x "
          f"{len(tasks)} tasks, batch {args.batch_size}, {torch.get_num_threads()} threads, {platform.processor()}")
    print("| cache | accuracy | forwards | position-layers | wall s | against no cache |\n|---|---|---|---|---|---|")
    for row in rows:
        if row["task"] == "mean":
            print(f"| `{row['cache']}` | {row['accuracy']} | {row['nfe_mean']} | {row['recomputed_mean']} | "
                  f"{row['wall_s']} | {row['wall_speedup']:.2f}x |")
    print("\nper task, accuracy (no cache -> each cache):")
    for task in tasks:
        cells = [row for row in rows if row["task"] == task]
        print(f"  {task}: " + ", ".join(f"{row['cache']} {row['accuracy']}" for row in cells))
    if args.out:
        record = {"command": " ".join(sys.argv), "machine": machine(), "rows": rows}
        write_text_atomically(args.out, json.dumps(record, indent=2))


def random_weights(architectures: list[str], caches: list[str], gen_length: int, block_length: int, policy: str) -> None:
    """Token agreement with no cache and the share of position-layers recomputed, on random weights."""
    import unmask
    from unmask.contrib.models.tiny import tiny_denoiser

    generator = torch.Generator().manual_seed(0)
    print(f"policy {policy}, gen {gen_length}, block {block_length}, 16 random prompts of 4-20 tokens")
    print("| architecture | cache | tokens as no cache | position-layers / no cache |\n|---|---|---|---|")
    for architecture in architectures:
        model = tiny_denoiser(architecture)
        prompts = [torch.randint(4, model.vocab_size, (int(n),), generator=generator).tolist()
                   for n in torch.randint(4, 21, (16,), generator=generator)]
        settings = dict(gen_length=gen_length, block_length=block_length, policy=policy)
        base = unmask.decode(model, prompts, cache="none", **settings)
        for cache in caches:
            result = unmask.decode(model, prompts, cache=cache, **settings)
            agreement = (result.tokens == base.tokens).float().mean().item()
            share = result.recomputed.sum().item() / base.recomputed.sum().item()
            print(f"| {architecture} | `{cache}` | {agreement:.1%} | {share:.2f} |")


def _extend(run: CellRun, part: CellRun) -> None:
    run.correct += part.correct
    run.nfe += part.nfe
    run.recomputed += part.recomputed
    run.answer_tokens += part.answer_tokens
    run.wall_s += part.wall_s
    run.components = part.components


if __name__ == "__main__":
    main()
