"""A distilled model (``unmask distill``) against its base, in one run: the table of docs/distill.md.

    python benchmarks/distill.py --distilled DIR --out benchmarks/results/distill.json

Both models decode the held-out items of every task of the suite (gen 128, block 32) with the entropy rule
(``entropy_threshold:h=0.5``) and Fast-dLLM's threshold (``threshold:tau=0.9``), without a stop and with
EoTP. Printed per (policy, stop): mean accuracy (%) and forwards of each model, the forwards ratio
(distilled / base), the accuracy change and the task that lost most.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from unmask._files import write_text_atomically

POLICIES = ("entropy_threshold:h=0.5", "threshold:tau=0.9")
STOPS = ("none", "eotp")


def measure(source: str, n: int) -> list[dict[str, Any]]:
    from unmask.contrib.eval.bench import bench
    from unmask.contrib.models.transformers import load
    from unmask.contrib.tasks import SUITE
    from unmask.core.types import DecodeConfig

    model, tokenizer = load(source)
    return bench(model, tokenizer, tasks=SUITE, n=n, seed=0, policies=POLICIES, stops=STOPS, model_name=source,
                 config=DecodeConfig(gen_length=128, block_length=32), progress=False)


def table(base: list[dict[str, Any]], distilled: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    def index(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(row["policy"], row["stop"], row["task"]): row for row in rows}

    before, after = index(base), index(distilled)
    summary, lines = [], ["| policy | stop | base acc | base fwd | distilled acc | distilled fwd | fwd ratio | "
                          "acc change | worst task |", "|---|---|---|---|---|---|---|---|---|"]
    for policy in POLICIES:
        for stop in STOPS:
            mean_b, mean_d = before[(policy, stop, "mean")], after[(policy, stop, "mean")]
            changes = {task: after[key]["accuracy"] - row["accuracy"]
                       for key, row in before.items() if key[:2] == (policy, stop) and (task := key[2]) != "mean"}
            worst = min(changes, key=changes.get)
            row = {"policy": policy, "stop": stop, "base_accuracy": mean_b["accuracy"], "base_nfe": mean_b["nfe_mean"],
                   "distilled_accuracy": mean_d["accuracy"], "distilled_nfe": mean_d["nfe_mean"],
                   "nfe_ratio": round(mean_d["nfe_mean"] / mean_b["nfe_mean"], 3),
                   "accuracy_change": round(mean_d["accuracy"] - mean_b["accuracy"], 2),
                   "worst_task": worst, "worst_change": round(changes[worst], 2)}
            summary.append(row)
            lines.append(f"| `{policy}` | {stop} | {row['base_accuracy']:.1f} | {row['base_nfe']:.2f} | "
                         f"{row['distilled_accuracy']:.1f} | {row['distilled_nfe']:.2f} | {row['nfe_ratio']:.2f} | "
                         f"{row['accuracy_change']:+.1f} | {worst} {row['worst_change']:+.1f} |")
    return summary, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distilled", required=True, help="the distilled model's directory")
    parser.add_argument("--base", default="reference", help="the base model (default: reference)")
    parser.add_argument("--n", type=int, default=40, help="held-out items per task (default 40)")
    parser.add_argument("--out", type=Path, help="write the rows and the summary here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    base, distilled = measure(args.base, args.n), measure(args.distilled, args.n)
    summary, markdown = table(base, distilled)
    print(markdown)
    if args.out:
        training = Path(args.distilled) / "training.json"
        record = {"summary": summary, "base": base, "distilled": distilled, "n": args.n,
                  "training": json.loads(training.read_text()) if training.is_file() else None}
        write_text_atomically(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
