"""Bad input, as a careless user or an attacker gives it: one clear line and exit status 2 on the command line,
a named exception in Python; no code runs from a file, nothing a command did not write is touched."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import time
import zipfile
from pathlib import Path

import attrs
import pytest
import torch

import unmask
from unmask.contrib.cli import main
from unmask.contrib.eval.ablate import GridError
from unmask.contrib.models.reference import FILTERS_DIR, REFERENCE_MODEL_DIR
from unmask.core.spec import SpecError
from unmask.core.types import Commit, DecodeConfig
from unmask.testing import FakeDenoiser

GENERATE = ["generate", "3 + 5 ="]


def run_cli(argv, capsys):
    try:
        status = main([str(a) for a in argv])
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


def assert_one_line_error(argv, expected, capsys):
    status, err = run_cli(argv, capsys)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err


def crafted_skops(path: Path, marker: Path) -> Path:
    """A skops file whose root is ``builtins.eval`` called on a string that would write ``marker``."""
    import skops.io

    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    with zipfile.ZipFile(io.BytesIO(skops.io.dumps((payload,)))) as archive:
        arguments = json.loads(archive.read("schema.json"))
    schema = {"__class__": "eval", "__module__": "builtins", "__loader__": "ConstructorFromReduceNode",
              "content": {k: v for k, v in arguments.items() if k not in ("protocol", "_skops_version")},
              "protocol": arguments["protocol"], "_skops_version": arguments["_skops_version"]}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
    return path


def copy_filter(name: str, target: Path) -> Path:
    shutil.copytree(FILTERS_DIR / name, target)
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. no code runs when a filter loads ------------------------------------------------------------------


def test_the_crafted_skops_file_is_dangerous_when_trusted(tmp_path):
    import skops.io

    marker = tmp_path / "ran"
    path = crafted_skops(tmp_path / "model.skops", marker)
    assert skops.io.get_untrusted_types(file=path) == ["builtins.eval"]
    skops.io.load(path, trusted=["builtins.eval"])
    assert marker.read_text() == "ran"  # what a prefix allowlist admitted


def test_a_crafted_filter_is_refused_by_path_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = copy_filter("gbdt", tmp_path / "evil")
    crafted_skops(evil / "model.skops", marker)
    with pytest.raises(SpecError, match="builtins.eval"):
        unmask.decode(FakeDenoiser(), [[1, 2]], gen_length=4, policy=f"learn2pd:filter={evil}")
    assert_one_line_error(GENERATE + ["--policy", f"learn2pd:filter={evil}"], "builtins.eval", capsys)
    assert not marker.exists()


def test_a_crafted_filter_under_a_shipped_name_in_the_working_directory_is_ignored(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    crafted_skops(copy_filter("gbdt", tmp_path / "gbdt") / "model.skops", marker)
    (tmp_path / "mlp").mkdir()  # a folder named like the default filter, holding no filter at all
    monkeypatch.chdir(tmp_path)
    for policy in ("learn2pd:filter=gbdt", "learn2pd"):
        status, _ = run_cli(GENERATE + ["--policy", policy, "--gen-length", "32"], capsys)
        assert status == 0
    assert not marker.exists()
    assert_one_line_error(GENERATE + ["--policy", "learn2pd:filter=./gbdt"], "builtins.eval", capsys)
    assert not marker.exists()


def test_a_registered_model_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "config.json").write_text("{not json")
    monkeypatch.chdir(tmp_path)
    model, _ = unmask.load("reference")
    assert model.vocab_size > 0
    with pytest.raises(FileNotFoundError, match="no such directory"):
        unmask.load("./no-such-model")


# --- 3. writers never delete what they did not write ------------------------------------------------------


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("traces") / "t"
    assert main(["collect", "--tasks", "shuffle", "--n", "4", "--out", str(out), "--gen-length", "32",
                 "--block-length", "32", "--batch-size", "4"]) == 0
    return out


def test_an_unrelated_folder_given_as_out_is_left_intact(traces, tmp_path, capsys):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("keep me")
    (victim / "sub" / "data.bin").write_bytes(bytes(range(256)))
    before = snapshot(victim)
    for argv in (["train-filter", "--traces", traces, "--kind", "gbdt", "--out", victim],
                 ["train-model", "--out", victim, "--steps", "1"],
                 ["collect", "--tasks", "chain_sum", "--n", "1", "--out", victim]):
        assert_one_line_error(argv, "--out", capsys)
        assert snapshot(victim) == before
    assert [p.name for p in tmp_path.iterdir()] == ["victim"]  # no staging folder left behind


def test_traces_survive_out_dot_and_out_equal_to_the_input(traces, monkeypatch, capsys):
    before = snapshot(traces)
    monkeypatch.chdir(traces)
    assert_one_line_error(["train-filter", "--traces", ".", "--kind", "gbdt", "--out", "."], "working directory", capsys)
    assert_one_line_error(["train-model", "--out", ".", "--steps", "1"], "working directory", capsys)
    monkeypatch.chdir(traces.parent.parent)
    assert_one_line_error(["train-filter", "--traces", traces, "--kind", "gbdt", "--out", traces], "holds the input",
                          capsys)
    assert_one_line_error(["train-filter", "--traces", traces, "--kind", "gbdt", "--out", traces.parent],
                          "holds the input", capsys)
    assert snapshot(traces) == before


def test_an_earlier_output_is_replaced_and_overwrite_keeps_other_files(traces, tmp_path):
    out = tmp_path / "filter"
    for _ in range(2):  # the second run replaces the first run's output
        assert main(["train-filter", "--traces", str(traces), "--kind", "gbdt", "--out", str(out),
                     "--param", "max_iter=5"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["train-filter", "--traces", str(traces), "--kind", "gbdt", "--out", str(mine), "--overwrite",
                 "--param", "max_iter=5"]) == 0
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "filter.json").is_file()
    assert {p.name for p in out.iterdir()} == {"filter.json", "model.skops", ".unmask-output.json"}


# --- 4. ablate never reuses rows made otherwise; one writer at a time -------------------------------------

GRID = {"name": "g", "tasks": ["chain_sum"], "n": 2, "seed": 0, "gen_lengths": [16], "block_length": 16,
        "policies": ["topk"], "stops": ["none"], "caches": ["none"], "batch_size": 2}


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


# --- 5. the engine never hangs on a broken model -----------------------------------------------------------


class Broken(FakeDenoiser):
    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def forward(self, input_ids, **kwargs):
        logits = super().forward(input_ids, **kwargs)
        if self.fault == "short":
            return logits[:, :-1]
        if self.fault == "nan":
            return logits.masked_fill(torch.ones_like(logits, dtype=torch.bool), math.nan)
        return torch.full_like(logits, -math.inf)


@pytest.mark.parametrize("fault, message", [("short", "step 0: the model returned logits"),
                                            ("nan", "step 0: the model returned NaN"),
                                            ("-inf", "step 0: the model returned NaN or infinite")])
def test_a_broken_model_raises_at_once(fault, message):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        unmask.decode(Broken(fault), [[1, 2, 3]], gen_length=8)
    assert time.perf_counter() - started < 1.0


class CommitTokens:
    """Commits the block's first masked position with the given tokens."""

    def __init__(self, make_tokens):
        self.make_tokens = make_tokens

    def select(self, view):
        mask = torch.zeros_like(view.masked)
        first = view.candidates.float().argmax(1)
        mask[torch.arange(len(first)), first] = view.row_active
        return Commit(mask=mask, tokens=self.make_tokens(view))


@pytest.mark.parametrize("make_tokens, error, message", [
    (lambda v: torch.full_like(v.x, 10_000), ValueError, "outside the vocabulary"),
    (lambda v: torch.full_like(v.x, -5), ValueError, "outside the vocabulary"),
    (lambda v: v.x0.float(), TypeError, "Commit.tokens must be a long tensor"),
    (lambda v: v.x0[:, :-1], TypeError, "Commit.tokens must be a long tensor"),
])
def test_commit_tokens_are_checked(make_tokens, error, message):
    with pytest.raises(error, match=message):
        unmask.decode(FakeDenoiser(), [[1, 2, 3]], gen_length=4, policy=CommitTokens(make_tokens))


# --- 6. the Python API names the argument and the rule -----------------------------------------------------

fake = FakeDenoiser()


@pytest.mark.parametrize("call, error, message", [
    (lambda: unmask.decode(fake, [[1, 2]], policy=None), SpecError, "policy must be a spec string"),
    (lambda: unmask.decode(fake, [[1, 2]], policy=42), SpecError, "policy must be a spec string"),
    (lambda: unmask.decode(fake, [[1, 2]], stop=42), SpecError, "stop must be"),
    (lambda: unmask.decode(fake, [[1, 2]], cache=object()), SpecError, "cache must be"),
    (lambda: unmask.decode(fake, [[1, 2]], policy=("topk",)), SpecError, "spec tuple must be"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="threshold:tau=abc"), SpecError, "tau must be a number"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="threshold:tau=true"), SpecError, "tau must be a number"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="threshold:tau=nan"), SpecError, r"tau must lie in \[0, 1\]"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="entropy_bound:bound=nan"), SpecError, "bound must be a finite number >= 0"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="learn2pd:filter=42"), SpecError, "filter must be a trained filter"),
    (lambda: unmask.decode(fake, [[1, 2]], policy="nope"), ValueError, "nope"),
    (lambda: unmask.decode(fake, [[1, 30]]), ValueError, "token id 30 is outside the model's vocabulary of 24"),
    (lambda: unmask.decode(fake, [[1, -2]]), ValueError, "token id -2 is negative"),
    (lambda: unmask.decode(fake, [[1], []]), ValueError, r"prompt\(s\) \[1\] are empty"),
    (lambda: unmask.decode(fake, [[1, 2]], mask_token_id=fake.eos_token_id), ValueError, "both"),
    (lambda: unmask.decode(fake, [[1, 2]], mask_token_id=-1), ValueError, "mask_token_id must be a token id"),
    (lambda: DecodeConfig(temperature=math.nan), ValueError, "temperature must be a finite number"),
    (lambda: DecodeConfig(temperature=math.inf), ValueError, "temperature must be a finite number"),
    (lambda: DecodeConfig(gen_length=16, steps=32), ValueError, "steps=32 must be at most gen_length=16"),
    (lambda: DecodeConfig(gen_length=16.0), ValueError, "gen_length must be a positive integer"),
    (lambda: DecodeConfig(gen_length=True), ValueError, "gen_length must be a positive integer"),
    (lambda: DecodeConfig(block_length=0), ValueError, "block_length must be a positive integer"),
    (lambda: DecodeConfig(seed="1"), ValueError, "seed must be an integer >= 0"),
    (lambda: unmask.decode(fake, torch.tensor([[1.0, 2.0]])), ValueError, "input_ids must be a 2-D integer tensor"),
    (lambda: unmask.decode(fake, torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 2]])), ValueError,
     "attention_mask must hold only 0 and 1"),
])
def test_api_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_prompt_longer_than_the_models_positions_is_refused():
    model, _ = unmask.load("reference")
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        unmask.decode(model, [[5] * 500], gen_length=32)
    block_model, _ = unmask.load("reference-block")
    with pytest.raises(ValueError, match="gen_length=32, rounded up to whole blocks of 32, exceeds the model's 512"):
        unmask.decode(block_model, [[5] * 500], gen_length=32)


# --- 6. the command line: one line naming the argument, exit status 2 ---------------------------------------


def _model_dir(tmp_path: Path, damage) -> Path:
    target = shutil.copytree(REFERENCE_MODEL_DIR, tmp_path / "model", ignore=shutil.ignore_patterns("filters"))
    damage(target)
    return target


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _filter_dir(tmp_path: Path, kind: str, damage) -> Path:
    target = copy_filter(kind, tmp_path / f"{kind}-filter")
    damage(target)
    return target


def _header_without(key):
    def damage(folder: Path) -> None:
        header = json.loads((folder / "filter.json").read_text())
        del header[key]
        (folder / "filter.json").write_text(json.dumps(header))
    return damage


def _mlp_weights(change):
    def damage(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "weights.safetensors")
        save_file(change(weights), folder / "weights.safetensors")
    return damage


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


FILE_CASES = [
    ("model: truncated safetensors", lambda t: ["--model", _model_dir(t, lambda d: _truncate(d / "model.safetensors"))],
     "the weights do not load"),
    ("model: a file", lambda t: ["--model", _model_dir(t, lambda d: None) / "config.json"], "is a file"),
    ("model: no config", lambda t: ["--model", _model_dir(t, lambda d: (d / "config.json").unlink())],
     "has no config.json"),
    ("filter: no kind", lambda t: ["--policy", f"learn2pd:filter={_filter_dir(t, 'mlp', _header_without('kind'))}"],
     "missing field(s) kind"),
    ("filter: not JSON", lambda t: ["--policy", "learn2pd:filter=" + str(_filter_dir(
        t, "mlp", lambda d: (d / "filter.json").write_text("{")))], "not valid JSON"),
    ("filter: truncated weights", lambda t: ["--policy", "learn2pd:filter=" + str(_filter_dir(
        t, "mlp", lambda d: _truncate(d / "weights.safetensors")))], "the weights do not load"),
    ("filter: wrong-shape weights", lambda t: ["--policy", "learn2pd:filter=" + str(_filter_dir(
        t, "mlp", _mlp_weights(lambda w: {k: v[..., :3].contiguous() for k, v in w.items()})))],
     "but the header's width"),
    ("filter: NaN weights", lambda t: ["--policy", "learn2pd:filter=" + str(_filter_dir(
        t, "mlp", _mlp_weights(lambda w: {k: torch.full_like(v, math.nan) for k, v in w.items()})))],
     "NaN or infinite weights"),
    ("filter: truncated skops", lambda t: ["--policy", "learn2pd:filter=" + str(_filter_dir(
        t, "gbdt", lambda d: _truncate(d / "model.skops")))], "not a readable skops file"),
]


@pytest.mark.parametrize("name, arguments, expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_damaged_files(name, arguments, expected, tmp_path, capsys):
    assert_one_line_error(GENERATE + arguments(tmp_path), expected, capsys)


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


# --- 7. a fresh install's report: forged markers, damaged files, sizes, seeds, names -----------------------


def test_a_forged_marker_proves_nothing(traces, tmp_path, capsys):
    """A marker lists what a command wrote with each entry's hash: a forged or stale one deletes nothing."""
    from unmask._files import MARKER, digest

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    (victim / "filter.json").write_text("my own file")
    for entries in (["notes.txt", "filter.json"], {"notes.txt": "0" * 64, "filter.json": "0" * 64}):
        (victim / MARKER).write_text(json.dumps({"command": "train-filter", "entries": entries}))
        before = snapshot(victim)
        assert_one_line_error(["train-filter", "--traces", traces, "--kind", "gbdt", "--out", victim,
                               "--param", "max_iter=5"], "did not write", capsys)
        assert snapshot(victim) == before
    # A marker that proves one entry proves nothing about a file added beside it.
    out = tmp_path / "filter"
    assert main(["train-filter", "--traces", str(traces), "--kind", "gbdt", "--out", str(out), "--param",
                 "max_iter=5"]) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["entries"]["filter.json"] == digest(out / "filter.json")
    (out / "notes.txt").write_text("added by the user")
    assert_one_line_error(["train-filter", "--traces", traces, "--kind", "gbdt", "--out", out], "notes.txt", capsys)
    (out / "notes.txt").unlink()
    (out / "filter.json").write_text((out / "filter.json").read_text() + " ")  # changed since
    assert_one_line_error(["train-filter", "--traces", traces, "--kind", "gbdt", "--out", out], "filter.json", capsys)


def _progress(training_config, **change):
    import random

    from attrs import asdict

    progress = {"config": json.loads(json.dumps(asdict(training_config))), "step": 1, "log": [], "running": None,
                "elapsed_s": 0.0, "rng": json.loads(json.dumps(random.Random(0).getstate()))}
    progress.update(change)
    return {k: v for k, v in progress.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize("damage, expected", [
    (lambda c: c.joinpath("progress.json").write_text('{"config": {'), "progress.json: not valid JSON"),
    (lambda c: c.joinpath("progress.json").write_bytes(b"\xff\xfe"), "progress.json: not UTF-8"),
    (lambda c: _write_progress(c, config=_DROP), "progress.json is damaged (missing config)"),
    (lambda c: _write_progress(c, rng=_DROP), "progress.json is damaged (missing rng)"),
    (lambda c: _write_progress(c, rng=[1, 2]), "progress.json is damaged (rng"),
    (lambda c: _write_progress(c, step="x"), "progress.json is damaged (step"),
    (lambda c: _write_progress(c) or c.joinpath("state.safetensors").write_bytes(b"\x08\x00"), "state.safetensors: not a readable"),
    (lambda c: _write_progress(c), "state.safetensors: no such file"),
    (lambda c: _write_progress(c) or _save_state(c, {"optimizer.0.step": torch.zeros(1)}), "no model or generator state"),
])
def test_a_damaged_checkpoint_is_one_line_before_the_data_is_prepared(damage, expected, tmp_path, capsys,
                                                                      monkeypatch):
    from unmask.contrib.train import model as training

    monkeypatch.setattr(training, "_Examples", lambda config: pytest.fail("the data was prepared"))
    checkpoint = tmp_path / "m.checkpoint"
    checkpoint.mkdir()
    damage(checkpoint)
    started = time.perf_counter()
    assert_one_line_error(["train-model", "--out", tmp_path / "m", "--resume"], expected, capsys)
    assert time.perf_counter() - started < 5


def _write_progress(checkpoint, **change):
    from unmask.contrib.train.model import TrainingConfig

    (checkpoint / "progress.json").write_text(json.dumps(_progress(TrainingConfig(), **change)))


def _save_state(checkpoint, tensors):
    from safetensors.torch import save_file

    save_file({"generator": torch.Generator().get_state(), **tensors}, checkpoint / "state.safetensors")


def test_checkpoint_tensors_that_do_not_fit_the_model_name_the_file(tmp_path):
    from unmask.contrib.models.tiny import tiny_model, tiny_tokenizer
    from unmask.contrib.train.model import _apply_checkpoint

    model = tiny_model("llama", tiny_tokenizer())
    optimizer = torch.optim.AdamW(model.parameters())
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    name = next(iter(weights))
    for tensors, expected in [({**weights, name: torch.zeros(3)}, f"another shape, e.g. {name[6:]}"),
                              (weights, "optimizer state of parameter 0")]:
        with pytest.raises(ValueError, match=r"state.safetensors (does not fit the model|is damaged)") as error:
            _apply_checkpoint(tmp_path, {"generator": torch.Generator().get_state(), **tensors}, model, optimizer,
                              torch.Generator())
        assert expected in str(error.value)


def _traces_copy(traces, tmp_path, damage):
    target = shutil.copytree(traces, tmp_path / "damaged")
    damage(target)
    return target


def _manifest(change):
    def damage(folder):
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return damage


def _first_shard(folder):
    return next(p for p in sorted(folder.iterdir()) if p.suffix == ".safetensors")


def _shard_without_labels(folder):
    from safetensors.torch import load_file, save_file

    shard = _first_shard(folder)
    tensors = load_file(shard)
    del tensors["labels"]
    save_file(tensors, shard)


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
    (lambda f: (f / "manifest.json").write_text("[]"), "traces format 'list'"),
    (_manifest(lambda m: m.update(shards=[])), "manifest.json: damaged manifest"),
    (_manifest(lambda m: m["settings"].pop("model")), "settings lack model"),
    (_manifest(lambda m: m["shards"].update({"../x-0": {}})), "shard '../x-0' is no shard"),
    (lambda f: _truncate(_first_shard(f)), "not a readable safetensors file (a traces shard)"),
    (_shard_without_labels, "not a traces shard (missing tensor(s) labels)"),
])
def test_damaged_traces_name_the_file(damage, expected, traces, tmp_path, capsys):
    damaged = _traces_copy(traces, tmp_path, damage)
    assert_one_line_error(["train-filter", "--traces", damaged, "--kind", "gbdt", "--out", tmp_path / "f"],
                          expected, capsys)


def _llada_source(tmp_path, damage):
    from safetensors.torch import save_file

    source = tmp_path / "llada"
    source.mkdir()
    config = {"d_model": 8, "mlp_hidden_size": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 32, "mask_token_id": 31,
              "eos_token_id": 30}
    (source / "config.json").write_text(json.dumps(config))
    save_file({"model.transformer.wte.weight": torch.zeros(32, 8)}, source / "model.safetensors")
    damage(source)
    return source


def _outside_link(source):
    secret = source.parent / "secret.txt"
    secret.write_text("not part of the checkpoint")
    (source / "tokenizer.json").symlink_to(secret)


@pytest.mark.parametrize("damage, expected", [
    (lambda s: (s / "config.json").write_text("{"), "config.json: not valid JSON"),
    (lambda s: (s / "config.json").write_text("[1]"), "config.json: must hold a JSON object"),
    (lambda s: (s / "config.json").write_text('{"d_model": 8}'), "config.json: missing field 'vocab_size'"),
    (lambda s: _truncate(s / "model.safetensors"), "model.safetensors: not a readable safetensors file"),
    (lambda s: (s / "config.json").unlink(), "config.json: no such file"),
    (_outside_link, "tokenizer.json is a symlink"),
])
def test_bad_llada_sources(damage, expected, tmp_path, capsys):
    source = _llada_source(tmp_path, damage)
    assert_one_line_error(["convert-llada", source, tmp_path / "out"], expected, capsys)
    assert not (tmp_path / "out").exists()


def test_non_utf8_prompts_name_the_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert_one_line_error(["collect", "--prompts", prompts, "--out", tmp_path / "t"], "prompts.jsonl: not UTF-8",
                          capsys)


def _tiny_dir(tmp_path, **config_change):
    from unmask.contrib.models.tiny import save_tiny

    directory = save_tiny("llama", tmp_path / "tiny")
    config = json.loads((directory / "config.json").read_text())
    config.update(config_change)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("change, expected", [
    ({"num_hidden_layers": 10**6}, "the config does not belong to these weights"),
    ({"hidden_size": 10**6, "num_attention_heads": 1, "head_dim": 10**6}, "describes at least"),
])
def test_a_config_far_larger_than_its_weights_is_refused_before_allocation(change, expected, tmp_path, capsys):
    started = time.perf_counter()
    assert_one_line_error(GENERATE + ["--model", _tiny_dir(tmp_path, **change)], expected, capsys)
    assert time.perf_counter() - started < 5


def test_an_unknown_model_name_waits_on_no_network(capsys):
    started = time.perf_counter()
    assert_one_line_error(GENERATE + ["--model", "no-such-name"],
                          "neither a registered model (reference, reference-block)", capsys)
    with pytest.raises(ValueError, match="pass --download"):
        unmask.load("no-such-owner/no-such-name")
    assert time.perf_counter() - started < 5


def _mlp_header(change):
    def damage(folder: Path) -> None:
        header = json.loads((folder / "filter.json").read_text())
        change(header)
        (folder / "filter.json").write_text(json.dumps(header))
    return damage


def _inflating_skops(folder: Path) -> None:
    with zipfile.ZipFile(folder / "model.skops", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", "{}")
        archive.writestr("big.bin", bytes(100 * 2**20))


@pytest.mark.parametrize("kind, damage, expected", [
    ("mlp", _mlp_header(lambda h: h["params"].update(hidden=10**9)), "but the header's width"),
    ("mlp", _mlp_header(lambda h: h["params"].update(hidden="32")), "parameter hidden must be an integer"),
    ("mlp", _mlp_header(lambda h: h["state"].update(width=10**9)), "but the header's width"),
    ("gbdt", _inflating_skops, "inflates to 100 MB"),
])
def test_filter_sizes_are_checked_before_allocation(kind, damage, expected, tmp_path):
    import tracemalloc

    folder = _filter_dir(tmp_path, kind, damage)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match=re.escape(expected)):
            unmask.decode(FakeDenoiser(), [[1, 2]], gen_length=32, block_length=32, policy=f"learn2pd:filter={folder}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


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


def test_an_unk_inside_an_answer_scores_wrong():
    from unmask.contrib.models.transformers import decode_answers
    from unmask.contrib.tasks import samples, score

    model, tokenizer = unmask.load("reference")
    sample = samples("copy", 1, 0)[0]
    ids = tokenizer(sample.answer)["input_ids"]
    for inside, correct in ((ids, True), (ids[:1] + [tokenizer.unk_token_id] + ids[1:], False)):
        tokens = torch.tensor([inside + [model.eos_token_id]])
        result = unmask.decode(model, [[5]], gen_length=4)  # a result whose tokens are then replaced
        result = attrs.evolve(result, tokens=tokens, answer_lengths=torch.tensor([len(inside)]))
        answer = decode_answers(tokenizer, result)[0]
        assert score(sample, answer) is correct, answer


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
    started = time.perf_counter()
    assert_one_line_error(argv, expected, capsys)
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "out").exists()


def test_filter_parameters_are_checked_before_the_traces_load(traces, tmp_path, capsys, monkeypatch):
    from unmask.contrib.train import filters

    monkeypatch.setattr(filters, "Traces", lambda *a: pytest.fail("the traces loaded"))
    assert_one_line_error(["train-filter", "--traces", traces, "--kind", "gbdt", "--out", tmp_path / "f",
                           "--param", "max_iter=abc"], "parameter max_iter must be an integer >= 1, got 'abc'", capsys)
    with pytest.raises(ValueError, match=r"tau must be a probability in \[0, 1\]"):
        filters.train_filter(traces, "gbdt", tmp_path / "f", tau=2)


@pytest.mark.parametrize("call, message", [
    (lambda: unmask.decode(fake, [[1, 2]], mask_token_id=99), "mask_token_id=99 is outside the model's vocabulary"),
    (lambda: DecodeConfig(seed=2**70), r"seed must be an integer >= 0 and < 2\*\*64"),
    (lambda: unmask.decode(fake, [[1, 2]], seed=2**64), r"seed must be an integer >= 0 and < 2\*\*64"),
])
def test_fresh_api_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_logits_whose_sum_overflows_are_checked_term_by_term():
    from unmask.core.scoring import check_logits

    huge = torch.full((2, 5, 10), 3e37)  # finite, but their float32 sum is infinite
    check_logits(huge, (2, 5), 3, 0)
    huge[1, 4, 9] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_logits(huge, (2, 5), 3, 0)
