"""What a Learn2PD filter costs: the share of decoding time spent in the policy's feature extraction and
filter, on the bundled reference model.

    python benchmarks/filter_cost.py --n 20 --gen-length 128 --out benchmarks/results/filter_cost.json

Each filter decodes the same samples; the policy's ``select`` (features + filter + top-k) is timed inside
the decode, and its share is that time over the decode's wall time (forwards, scoring and stops included).
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from unmask._files import write_text_atomically
from unmask.contrib.models.reference import load_reference_model
from unmask.contrib.models.transformers import decode_text
from unmask.contrib.tasks import DEFAULT_TASKS, samples
from unmask.core.plugins import create


class TimedPolicy:
    """Delegates to a policy and adds up the seconds its ``select`` takes."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def select(self, view):
        started = time.perf_counter()
        chosen = self.inner.select(view)
        self.seconds += time.perf_counter() - started
        return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="samples per task (default: 20)")
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--filters", default="mlp,gbdt", help="trained filters to time (default: mlp,gbdt)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    model, tokenizer = load_reference_model()
    rows = []
    for name in args.filters.split(","):
        policy = TimedPolicy(create("policies", f"learn2pd:filter={name}"))
        wall, steps = 0.0, 0
        for task in DEFAULT_TASKS:
            prompts = [s.prompt for s in samples(task, args.n, 0)]
            for start in range(0, len(prompts), args.batch_size):
                _, result = decode_text(model, tokenizer, prompts[start:start + args.batch_size], chat=False,
                                        gen_length=args.gen_length, block_length=args.block_length,
                                        policy=policy, stop="eotp")
                wall += result.wall_s
                steps += int(result.nfe.max())
        rows.append({"filter": name, "filter_s": round(policy.seconds, 3), "decode_s": round(wall, 3),
                     "share": round(policy.seconds / wall, 4), "steps": steps,
                     "filter_ms_per_step": round(1000 * policy.seconds / steps, 3)})
    print(f"learn2pd + eotp, gen length {args.gen_length}, block {args.block_length}, {args.n} samples x "
          f"{len(DEFAULT_TASKS)} tasks, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print("| filter | filter s | decode s | share | ms per step |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['filter']} | {row['filter_s']} | {row['decode_s']} | {row['share']:.1%} | "
              f"{row['filter_ms_per_step']} |")
    if args.out:
        write_text_atomically(args.out, json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
