"""Data-parallel runs: two CPU processes under torchrun give the rows and trace files of one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unmask.contrib.cli import main
from unmask.contrib.distributed import Ranks, ranks, shard

SMALL = ["--gen-length", "32", "--block-length", "16"]


def torchrun(*arguments, cwd=None):
    """``torchrun --standalone --nproc-per-node 2 --no-python unmask ARGS`` (the installed command, as docs/eval.md
    recommends); its stdout (rank 0 alone prints)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--no-python", str(Path(sys.executable).with_name("unmask")), *map(str, arguments)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_shards_are_contiguous_and_cover_everything_once():
    items = list(range(7))
    parts = [shard(items, Ranks(rank=r, world_size=3)) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard(items[:1], Ranks(rank=1, world_size=2)) == []


def test_the_launchers_environment_names_the_process(monkeypatch):
    assert ranks() == Ranks()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks() == Ranks(rank=1, world_size=2, local_rank=1) and not ranks().main
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 must be below WORLD_SIZE=2"):
        ranks()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' must be a non-negative integer"):
        ranks()


def test_bench_on_two_processes_prints_the_rows_of_one(capsys):
    # torchrun's own parser would take --n for an abbreviation of its options: the long name passes through.
    arguments = ["bench", "--tasks", "chain_sum,shuffle", "--num-samples", "5", *SMALL, "--policy", "topk",
                 "--policy", "threshold:tau=0.7", "--stop", "eotp", "--json"]
    assert main(arguments) == 0
    one = json.loads(capsys.readouterr().out)
    two = json.loads(torchrun(*arguments))
    same = ("task", "policy", "stop", "n", "accuracy", "nfe_mean", "nfe_p50", "nfe_p90", "first_sample")
    assert [{k: r.get(k) for k in same} for r in two] == [{k: r.get(k) for k in same} for r in one]
    assert {r["processes"] for r in two if r["task"] != "mean"} == {2}


def test_collect_on_two_processes_writes_the_files_of_one(tmp_path, capsys):
    arguments = ["collect", "--tasks", "sort,shuffle", "--num-samples", "5", "--batch-size", "2", *SMALL]
    assert main([*arguments, "--out", str(tmp_path / "one")]) == 0
    torchrun(*arguments, "--out", tmp_path / "two")
    one, two = (sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("one", "two"))
    assert one == two and len(one) == 7  # six shards and the manifest
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_ablate_on_two_processes_writes_the_rows_of_one(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('tasks = ["sort"]\nn = 3\ngen_lengths = [32]\nblock_length = 16\nbatch_size = 2\n'
                    'policies = ["topk", "oracle"]\nstops = ["none", "eotp"]\n')
    assert main(["ablate", str(grid), "--out", str(tmp_path / "one.jsonl")]) == 0
    torchrun("ablate", grid, "--out", tmp_path / "two.jsonl")
    same = ("cell", "n", "accuracy", "nfe_mean", "first_sample")
    one, two = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
                for name in ("one.jsonl", "two.jsonl"))
    assert [{k: r.get(k) for k in same} for r in two] == [{k: r.get(k) for k in same} for r in one]
    assert not list(tmp_path.glob(".*.lock"))


def test_lm_eval_on_two_processes_scores_like_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["export-tasks", str(tmp_path / "tasks"), "--tasks", "chain_sum", "--n", "6", "--seed", "2"]) == 0
    arguments = ["lm-eval", "--model", "unmask", "--model_args", "pretrained=reference,gen_length=32,block_length=16",
                 "--tasks", "unmask_chain_sum", "--device", "cpu", "--include_path", tmp_path / "tasks"]
    scores = []
    for name, run in (("one", lambda *a: main(list(map(str, a)))), ("two", torchrun)):
        run(*arguments, "--output_path", tmp_path / name)
        results = json.loads(next((tmp_path / name).rglob("results_*.json")).read_text())
        scores.append(results["results"]["unmask_chain_sum"]["acc,none"])
    assert scores[0] == scores[1]
