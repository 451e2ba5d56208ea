"""Wall-clock speedup of the prefix and dual caches over no cache, on the bundled reference model.

    python benchmarks/cache_speedup.py --n 50 --gen-length 256 --batch-sizes 1,8 --out benchmarks/results/caches.json

Every cache decodes the same samples in the same process; speedup = wall time without a cache / with it.
"""

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from unmask.contrib.bench import bench
from unmask.contrib.reference import load_reference_model
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
    args = parser.parse_args()

    model, tokenizer = load_reference_model()
    config = DecodeConfig(gen_length=args.gen_length, block_length=args.block_length)
    caches = args.caches.split(",")
    report, everything = [], []
    for batch_size in map(int, args.batch_sizes.split(",")):
        rows = bench(model, tokenizer, tasks=DEFAULT_TASKS, n=args.n, seed=args.seed, policies=[args.policy],
                     caches=caches, config=config, batch_size=batch_size)
        means = {row["cache"]: row for row in rows if row["task"] == "mean"}
        base = means[caches[0]]
        for cache, row in means.items():
            report.append(f"| {batch_size} | {cache} | {row['accuracy']} | {row['nfe_mean']} | {row['wall_s']} "
                          f"| {base['wall_s'] / row['wall_s']:.2f}x |")
        everything += [{**row, "batch_size": batch_size} for row in rows]
    print(f"policy {args.policy}, gen length {args.gen_length}, block {args.block_length}, "
          f"{args.n} samples x {len(DEFAULT_TASKS)} tasks, {torch.get_num_threads()} threads, {platform.processor()}")
    print("| batch | cache | accuracy | NFE | wall s | speedup |\n|---|---|---|---|---|---|")
    print("\n".join(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as handle:
            json.dump(everything, handle, indent=2)
        os.replace(handle.name, args.out)


if __name__ == "__main__":
    main()
