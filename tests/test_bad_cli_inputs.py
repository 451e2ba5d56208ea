"""Bad input on the command line: one line naming the argument and the rule, exit status 2, before any model
loads; ablation grids checked whole before they run."""

from __future__ import annotations

import socket

import pytest
import torch

import unmask
from unmask.contrib.eval.ablate import GridError
from unmask.core import engine

from _bad_inputs import GENERATE, GRID, assert_one_line_error


CLI_CASES = [
    (["bench", "--n", "0"], "argument --n/--num-samples: must be a positive integer"),
    (["bench", "--n", "-3"], "argument --n/--num-samples: must be a positive integer"),
    (["bench", "--n", "abc"], "argument --n/--num-samples: must be a positive integer"),
    (["bench", "--batch-size", "0"], "argument --batch-size"),
    (["bench", "--tasks", ""], "argument --tasks: must name at least one task"),
    (["bench", "--tasks", ",,"], "argument --tasks: must name at least one task"),
    (["bench", "--tasks", "chain_sum,nope"], "argument --tasks: unknown task(s) nope"),
    (["bench", "--device", "foo"], "argument --device"),
    (["bench", "--seed", "x"], "argument --seed"),
    (["bench", "--policy", "threshold:tau=abc", "--n", "1"], "tau must be a number"),
    (["bench", "--cell", "topk none"], "argument --cell: takes 'POLICY STOP CACHE'"),
    (["bench", "--cell", "topk none none", "--policy", "topk"], "give either --cell or --policy"),
    (["bench", "--cell", "topk none nope"], "nope"),
    (["collect", "--policy", "nope", "--n", "1", "--out", "x"], "nope"),
    (["collect", "--n", "0", "--out", "x"], "argument --n"),
    (["collect", "--batch-size", "0", "--out", "x"], "argument --batch-size"),
    (["collect", "--tasks", "", "--out", "x"], "argument --tasks"),
    (["collect", "--labels", "final", "--out", "x"], "argument --labels"),
    (GENERATE[:1] + [""], "argument prompt: the prompt is empty"),
    (GENERATE[:1] + ["   "], "argument prompt: the prompt is empty"),
    (GENERATE + ["--temperature", "nan"], "argument --temperature: must be a finite number"),
    (GENERATE + ["--temperature", "inf"], "argument --temperature"),
    (GENERATE + ["--temperature", "-1"], "argument --temperature"),
    (GENERATE + ["--gen-length", "0"], "argument --gen-length"),
    (GENERATE + ["--block-length", "-4"], "argument --block-length"),
    (GENERATE + ["--steps", "0"], "argument --steps"),
    (GENERATE + ["--gen-length", "16", "--steps", "32"], "steps=32 must be at most gen_length=16"),
    (GENERATE + ["--gen-length", "64", "--block-length", "48"], "must be a multiple of block_length=48"),
    (GENERATE + ["--policy", "nope"], "nope"),
    (GENERATE + ["--policy", "threshold:tau=abc"], "tau must be a number"),
    (GENERATE + ["--policy", "threshold:tau=true"], "tau must be a number"),
    (GENERATE + ["--policy", "threshold:tau=nan"], "tau must lie in [0, 1]"),
    (GENERATE + ["--policy", "entropy_bound:bound=nan"], "bound must be a finite number >= 0"),
    (GENERATE + ["--policy", "topk:k=0"], "k"),
    (GENERATE + ["--stop", "nope"], "nope"),
    (GENERATE + ["--cache", "nope"], "nope"),
    (GENERATE + ["--policy", "learn2pd:filter=no-such-filter"], "neither a saved filter directory"),
    (GENERATE + ["--model", "./no-such-dir"], "--model ./no-such-dir: no such directory"),
    (GENERATE + ["--model", "models/a/b"], "no such directory"),
    (["train-model", "--out", "x", "--steps", "0"], "argument --steps"),
    (["train-model", "--out", "x", "--threads", "0"], "argument --threads"),
    (["train-filter", "--traces", "t", "--kind", "gbdt", "--out", "f", "--tau", "nan"], "argument --tau"),
    (["train-filter", "--traces", "no-such-traces", "--kind", "gbdt", "--out", "f"], "holds no traces"),
    (["ablate", "no-such-grid.toml"], "no-such-grid.toml"),
    (["nope"], "invalid choice: 'nope'"),
]


@pytest.mark.parametrize("argv, expected", CLI_CASES, ids=[" ".join(c[0])[:60] for c in CLI_CASES])
def test_cli_errors(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(argv, expected, capsys)


def test_cuda_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_one_line_error(["bench", "--device", "cuda"], "CUDA is not available", capsys)


GRID_CASES = [
    ('tasks = ["chain_sum"]\n[[cells]]\npolicy = "topk"\ngen_lenght = 16\n', "cells[0]: unknown field(s) gen_lenght"),
    ('tasks = ["chain_sum"]\nbaseline = { polcy = "topk" }\n', "baseline: unknown field(s) polcy"),
    ('tasks = ["chain_sum"]\nn = true\n', "field 'n' must be a positive integer"),
    ('tasks = ["chain_sum"]\ngen_lengths = [16.0]\n', "gen_length must be a positive integer"),
    ('tasks = ["chain_sum"]\ngen_lenghts = [16]\n', "unknown field(s) gen_lenghts"),
    ('tasks = ["chain_sum"\n', "not valid TOML"),
    ('tasks = []\n', "field 'tasks' is empty"),
]


@pytest.mark.parametrize("text, expected", GRID_CASES)
def test_grid_files_are_checked_before_the_model_loads(text, expected, tmp_path, capsys, monkeypatch):
    from unmask.contrib.models import transformers

    monkeypatch.setattr(transformers, "load", lambda *a, **k: pytest.fail("the model loaded"))
    grid = tmp_path / "grid.toml"
    grid.write_text(text)
    assert_one_line_error(["ablate", grid], expected, capsys)


def test_an_unknown_model_name_waits_on_no_network(capsys, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", lambda *args: pytest.fail("a connection was attempted"))
    assert_one_line_error(GENERATE + ["--model", "no-such-name"],
                          "neither a registered model (reference, reference-block)", capsys)
    with pytest.raises(ValueError, match="pass --download"):
        unmask.load("no-such-owner/no-such-name")


def test_ablate_locks_its_resolved_output_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import fcntl

    from unmask.contrib.models import transformers

    monkeypatch.setattr(transformers, "load", lambda *a, **k: pytest.fail("the model loaded"))
    grid = tmp_path / "grid.toml"
    grid.write_text('tasks = ["chain_sum"]\nn = 2\ngen_lengths = [16]\nblock_length = 16\n')
    (tmp_path / "rows.jsonl").write_text("")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "rows.jsonl")
    with open(tmp_path / ".rows.jsonl.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_one_line_error(["ablate", grid, "--out", tmp_path / "link.jsonl"], "another unmask ablate", capsys)


@pytest.mark.parametrize("text, expected", [
    ('tasks = ["chain_sum"]\npolicies = ["learn2pd:filter=mlp"]\nblock_length = 16\ngen_lengths = [32]\n'
     'baseline = { policy = "learn2pd:filter=mlp" }\n', "trained on blocks of 32 tokens"),
    ('tasks = ["chain_sum"]\nseed = 999999\nn = 5\n', "reaches the training seeds"),
])
def test_grid_cells_are_checked_against_their_settings_before_the_model_loads(text, expected, tmp_path, capsys,
                                                                               monkeypatch):
    from unmask.contrib.models import transformers

    monkeypatch.setattr(transformers, "load", lambda *a, **k: pytest.fail("the model loaded"))
    grid = tmp_path / "grid.toml"
    grid.write_text(text)
    assert_one_line_error(["ablate", grid], expected, capsys)
    assert not grid.with_suffix(".jsonl").exists()


FRESH_CLI_CASES = [
    (["train-filter", "--traces", "t", "--kind", "gbdt", "--out", "f", "--tau", "2"],
     "argument --tau: must be a probability in [0, 1]"),
    (GENERATE + ["--policy", "threshold:tau=0.9,tau=0.1"], "parameter 'tau' is given twice"),
    (["bench", "--seed", "999990", "--n", "50"], "reaches the training seeds"),
    (["bench", "--seed", "-1"], "argument --seed: must be an integer in [0, 2**64)"),
    (["export-tasks", "out", "--seed", "1000000"], "reaches the training seeds"),
    (GENERATE + ["--seed", str(2**70)], "argument --seed: must be an integer in [0, 2**64)"),
    (["train-model", "--out", "x", "--seed", str(2**70)], "argument --seed"),
]


@pytest.mark.parametrize("argv, expected", FRESH_CLI_CASES, ids=[" ".join(c[0])[:60] for c in FRESH_CLI_CASES])
def test_fresh_cli_errors(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine, "_steps", lambda *args, **kwargs: pytest.fail("a decode ran"))
    assert_one_line_error(argv, expected, capsys)
    assert not (tmp_path / "out").exists()


def test_ablate_decodes_again_when_n_seed_or_weights_change(tmp_path, monkeypatch):
    from unmask.contrib.eval import runner

    real, calls = runner.run_cell, []
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "rows.jsonl"
    model, tokenizer = unmask.load("reference")
    unmask.ablate(GRID, out, progress=False, loaded=(model, tokenizer))
    unmask.ablate(GRID, out, progress=False, loaded=(model, tokenizer))
    assert len(calls) == 1  # same settings: reused
    rows = unmask.ablate({**GRID, "n": 3}, out, progress=False, loaded=(model, tokenizer))
    assert len(calls) == 2 and rows[0]["n"] == 3
    unmask.ablate({**GRID, "seed": 7}, out, progress=False, loaded=(model, tokenizer))
    assert len(calls) == 3
    with torch.no_grad():
        next(model.model.parameters()).add_(1e-3)
    rows = unmask.ablate(GRID, out, progress=False, loaded=(model, tokenizer))
    assert len(calls) == 4 and len(rows) == 1


def test_a_second_ablate_writer_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "rows.jsonl"
    with open(tmp_path / ".rows.jsonl.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(GridError, match="another"):
            unmask.ablate(GRID, out, progress=False)
    assert not out.exists()
