"""Decoding speed of ``topk`` and ``threshold`` against another revision of unmask, in one run.

    python benchmarks/engine_speed.py --against e773107 --rounds 5

Checks the revision out into a temporary git worktree, then times the same decodes of the bundled model
with each tree in turn (A B A B ..., a fresh process each time, so neither tree warms the other's caches)
and prints each policy's median wall time per tree and their ratio (this tree / the other).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in each tree: decode the same prompts with each policy and print the wall seconds as JSON.
TIMING = """
import json, sys, time, torch
import unmask
from unmask.contrib.models.reference import load_reference_model
from unmask.contrib.models.transformers import decode_text
from unmask.contrib.tasks import samples
assert unmask.__file__.startswith(sys.argv[1]), unmask.__file__
torch.set_num_threads(2)
model, tokenizer = load_reference_model()
prompts = [s.prompt for task in ("copy", "shuffle", "chain_sum") for s in samples(task, 16, 0)]
times = {}
# threshold needs a few forwards per decode: repeated, so that its time is seconds, not noise
for policy, repeats in (("topk", 1), ("threshold:tau=0.9", 8)):
    decode_text(model, tokenizer, prompts[:4], gen_length=32, block_length=32, policy=policy)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        decode_text(model, tokenizer, prompts, gen_length=64, block_length=32, policy=policy)
    times[policy] = time.perf_counter() - started
print(json.dumps(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="a git revision to compare with, e.g. a commit")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per tree (default: 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        other = Path(folder) / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.against], check=True,
                       capture_output=True)
        _stub_entry_points(other)
        try:
            runs = {"this": [], "other": []}
            for _ in range(args.rounds):
                for name, tree in (("this", ROOT), ("other", other)):
                    runs[name].append(_time(tree))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=True)
    for policy in runs["this"][0]:
        mine = statistics.median(r[policy] for r in runs["this"])
        theirs = statistics.median(r[policy] for r in runs["other"])
        print(f"{policy:<20} this {mine:.3f} s, {args.against} {theirs:.3f} s, ratio {mine / theirs:.3f}")


def _stub_entry_points(tree: Path) -> None:
    """The installed package's plug-in entry points name modules of this tree; one the other tree lacks (a
    package added since) gets an empty module there, so that the other tree loads with its own built-ins."""
    for entry in metadata.entry_points(group="unmask"):
        module = entry.value.split(":")[0]
        if module.split(".")[0] != "unmask":
            continue
        path = tree.joinpath(*module.split("."))
        if not path.with_suffix(".py").exists() and not (path / "__init__.py").exists():
            path.mkdir(parents=True, exist_ok=True)
            (path / "__init__.py").write_text('"""(absent in this revision)"""\n')


def _time(tree: Path) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", TIMING, str(tree)], capture_output=True, text=True, env=environment,
                          cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"timing in {tree} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
