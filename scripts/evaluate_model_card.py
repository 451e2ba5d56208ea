"""Evaluate a train-model output on the task suite's evaluation prompts and write the result into its card.

    python scripts/evaluate_model_card.py DIR [--n 200] [--gen-length 64]

Runs vanilla decoding (``topk``, one token per step) and ``topk:k=8``, each without a stop and with EoTP,
on ``n`` evaluation-part prompts per task (seed 0, block 32, temperature 0), then rewrites DIR/README.md
(the card) with the table and DIR/evaluation.json with every row. Nothing else in DIR changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unmask._files import write_text_atomically
from unmask.contrib.eval.bench import bench
from unmask.contrib.models.reference import write_model_card
from unmask.contrib.models.transformers import load
from unmask.contrib.tasks import SUITE
from unmask.core.types import DecodeConfig

CELLS = [("topk", "none"), ("topk:k=8", "none"), ("topk", "eotp"), ("topk:k=8", "eotp")]


def table(rows: list[dict], tasks: list[str]) -> str:
    def heading(policy: str, stop: str) -> str:
        return policy if stop == "none" else f"{policy} + {stop}"

    cell = {(r["policy"], r["stop"], r["task"]): f"{r['accuracy']:.1f} ({r['nfe_mean']:.1f})" for r in rows}
    lines = ["| task | " + " | ".join(heading(*c) for c in CELLS) + " |", "|---" * (len(CELLS) + 1) + "|"]
    lines += [f"| {task} | " + " | ".join(cell[(p, s, task)] for p, s in CELLS) + " |" for task in [*tasks, "mean"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a train-model output (config.json, weights, training.json)")
    parser.add_argument("--n", type=int, default=200, help="evaluation prompts per task (default: 200)")
    parser.add_argument("--gen-length", type=int, default=64, help="answer canvas (default: 64)")
    parser.add_argument("--batch-size", type=int, default=100, help="rows decoded together (default: 100)")
    args = parser.parse_args()
    if not (args.directory / "training.json").is_file():
        parser.error(f"directory: {args.directory} holds no training.json; give a train-model output")
    if args.n < 1 or args.gen_length < 32 or args.gen_length % 32:
        parser.error("--n must be at least 1 and --gen-length a positive multiple of the block length 32")
    model, tokenizer = load(args.directory)
    tasks = list(SUITE)
    rows = bench(model, tokenizer, tasks=tasks, n=args.n, seed=0, combinations=[(p, s, "none") for p, s in CELLS],
                 config=DecodeConfig(gen_length=args.gen_length, block_length=32), batch_size=args.batch_size,
                 model_name=str(args.directory))
    command = (f"unmask bench --model {args.directory} --n {args.n} --seed 0 --policy topk --policy topk:k=8 "
               f"--stop none --stop eotp \\\n        --gen-length {args.gen_length} --block-length 32 "
               f"--batch-size {args.batch_size}")
    evaluation = f"""Evaluation prompts (the content split's held-out part, seed 0, {args.n} per task), gen length
{args.gen_length}, block 32, temperature 0:

    {command}

Accuracy in % (forwards per sample in brackets); `topk` with steps = gen length is vanilla decoding,
one token per step; `topk:k=8` commits eight per step.

{table(rows, tasks)}
"""
    write_text_atomically(args.directory / "evaluation.json", json.dumps(rows, indent=1) + "\n")
    write_model_card(args.directory, evaluation)
    print(evaluation)


if __name__ == "__main__":
    main()
