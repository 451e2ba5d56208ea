"""FreeDave against one-token-per-step ``topk`` on the bundled reference model: token identity per row,
forwards per sample and wall time, with each cache on both sides.

    python benchmarks/freedave_lossless.py --n 20 --gen-length 128 --out benchmarks/results/freedave.json

Every task of the suite, ``--n`` prompts each, decoded in batches (rows finish their blocks at different
steps); ``topk`` with steps = gen length is the reference. FreeDave must equal it on every row.
"""

import argparse
import json
import platform
from pathlib import Path

import torch

from unmask._files import write_text_atomically
from unmask.contrib.models.reference import load_reference_model
from unmask.contrib.models.transformers import decode_text
from unmask.contrib.tasks import SUITE, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="prompts per task (default: 20)")
    parser.add_argument("--gen-length", type=int, default=128, help="canvas length (default: 128)")
    parser.add_argument("--block-length", type=int, default=32, help="block length (default: 32)")
    parser.add_argument("--batch-size", type=int, default=10, help="rows decoded together (default: 10)")
    parser.add_argument("--drafts", default="2,4,8", help="draft_steps values, comma-separated (default: 2,4,8)")
    parser.add_argument("--caches", default="none,prefix,dual", help="caches, comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_reference_model()
    prompts = [s.prompt for task in SUITE for s in samples(task, args.n, 0)]
    settings = dict(gen_length=args.gen_length, block_length=args.block_length)
    rows = []
    for cache in args.caches.split(","):
        reference = _run(model, tokenizer, prompts, args.batch_size, policy="topk", cache=cache, **settings)
        print(f"cache {cache}: topk {reference['nfe'] / len(prompts):.1f} forwards per sample, {reference['wall_s']:.1f} s")
        for drafts in map(int, args.drafts.split(",")):
            run = _run(model, tokenizer, prompts, args.batch_size, policy=f"freedave:draft_steps={drafts}", cache=cache,
                       **settings)
            identical = int((run["tokens"] == reference["tokens"]).all(1).sum())
            row = {"cache": cache, "draft_steps": drafts, "prompts": len(prompts), "identical_rows": identical,
                   "nfe_per_sample": run["nfe"] / len(prompts), "topk_nfe_per_sample": reference["nfe"] / len(prompts),
                   "nfe_ratio": run["nfe"] / reference["nfe"], "candidate_rows_per_sample": run["candidates"] / len(prompts),
                   "wall_s": round(run["wall_s"], 2), "topk_wall_s": round(reference["wall_s"], 2),
                   "speedup": round(reference["wall_s"] / run["wall_s"], 2)}
            rows.append(row)
            print(f"  freedave K={drafts}: {identical}/{len(prompts)} rows identical, {row['nfe_per_sample']:.1f} "
                  f"forwards per sample ({row['nfe_ratio']:.2f}x topk), {row['candidate_rows_per_sample']:.1f} "
                  f"candidate rows, wall {row['wall_s']} s ({row['speedup']}x)")
    if args.out:
        record = {"settings": {**vars(args), "out": str(args.out)}, "machine": platform.processor() or platform.machine(),
                  "torch": torch.__version__, "rows": rows}
        write_text_atomically(args.out, json.dumps(record, indent=2) + "\n")


def _run(model, tokenizer, prompts, batch_size, **settings):
    tokens, nfe, candidates, wall = [], 0, 0, 0.0
    for start in range(0, len(prompts), batch_size):
        _, result = decode_text(model, tokenizer, prompts[start:start + batch_size], **settings)
        tokens.append(result.tokens)
        nfe += int(result.nfe.sum())
        candidates += int(result.candidate_rows.sum())
        wall += result.wall_s
    return {"tokens": torch.cat(tokens), "nfe": nfe, "candidates": candidates, "wall_s": wall}


if __name__ == "__main__":
    main()
