"""Wall-clock speedup of the prefix and dual caches over no cache, on the bundled reference model (or
``--model DIR``, a train-model output).

    python benchmarks/cache_speedup.py --n 50 --gen-length 256 --batch-sizes 1,8 --out benchmarks/results/caches.json

Every cache decodes the same samples in the same process; speedup = wall time without a cache / with it.
"""

import argparse
import json
import platform
from pathlib import Path

import torch

from unmask._files import write_text_atomically
from unmask.contrib.eval.bench import bench
from unmask.contrib.models.reference import load_reference_model
from unmask.contrib.models.transformers import load
from unmask.contrib.tasks import DEFAULT_TASKS
from unmask.core.types import DecodeConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="samples per task (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="first sample seed (default: 0)")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--policy", default="threshold:tau=0.9")
    parser.add_argument("--caches", default="none,prefix,dual")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: the bundled model)")
    args = parser.parse_args()

    model, tokenizer = load_reference_model() if args.model is None else load(args.model)
    config = DecodeConfig(gen_length=args.gen_length, block_length=args.block_length)
    caches = args.caches.split(",")
    report, everything = [], []
    for batch_size in map(int, args.batch_sizes.split(",")):
        rows = bench(model, tokenizer, tasks=DEFAULT_TASKS, n=args.n, seed=args.seed, policies=[args.policy],
                     caches=caches, config=config, batch_size=batch_size)
        for row in rows:
            if row["task"] == "mean":  # speedups are against the first cache, in the same run
                report.append(f"| {batch_size} | {row['cache']} | {row['accuracy']} | {row['nfe_mean']} | "
                              f"{row['wall_s']} | {row['wall_speedup']:.2f}x |")
        everything += [{**row, "batch_size": batch_size} for row in rows]
    print(f"policy {args.policy}, gen length {args.gen_length}, block {args.block_length}, "
          f"{args.n} samples x {len(DEFAULT_TASKS)} tasks, {torch.get_num_threads()} threads, {platform.processor()}")
    print("| batch | cache | accuracy | NFE | wall s | speedup |\n|---|---|---|---|---|---|")
    print("\n".join(report))
    if args.out:
        write_text_atomically(args.out, json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
