"""Bad files, as a careless user or an attacker gives them: no code runs from a file, a damaged file is named
in one line before anything is allocated, and nothing a command did not write is touched."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import unmask
from unmask.contrib.cli import main
from unmask.core.spec import SpecError
from unmask.testing import FakeDenoiser

from _bad_inputs import (
    DROP, GENERATE, assert_one_line_error, copy_filter, crafted_skops, filter_dir, first_shard,
    header_without, inflating_skops, llada_source, manifest, mlp_header, mlp_weights, model_dir,
    outside_link, run_cli, save_state, shard_without_labels, snapshot, tiny_dir, traces_copy, truncate,
    write_progress,
)


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


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("traces") / "t"
    assert main(["collect", "--tasks", "shuffle", "--n", "4", "--out", str(out), "--gen-length", "32",
                 "--block-length", "32", "--batch-size", "4"]) == 0
    return out


FILE_CASES = [
    ("model: truncated safetensors", lambda t: ["--model", model_dir(t, lambda d: truncate(d / "model.safetensors"))],
     "the weights do not load"),
    ("model: a file", lambda t: ["--model", model_dir(t, lambda d: None) / "config.json"], "is a file"),
    ("model: no config", lambda t: ["--model", model_dir(t, lambda d: (d / "config.json").unlink())],
     "has no config.json"),
    ("filter: no kind", lambda t: ["--policy", f"learn2pd:filter={filter_dir(t, 'mlp', header_without('kind'))}"],
     "missing field(s) kind"),
    ("filter: not JSON", lambda t: ["--policy", "learn2pd:filter=" + str(filter_dir(
        t, "mlp", lambda d: (d / "filter.json").write_text("{")))], "not valid JSON"),
    ("filter: truncated weights", lambda t: ["--policy", "learn2pd:filter=" + str(filter_dir(
        t, "mlp", lambda d: truncate(d / "weights.safetensors")))], "the weights do not load"),
    ("filter: wrong-shape weights", lambda t: ["--policy", "learn2pd:filter=" + str(filter_dir(
        t, "mlp", mlp_weights(lambda w: {k: v[..., :3].contiguous() for k, v in w.items()})))],
     "but the header's width"),
    ("filter: NaN weights", lambda t: ["--policy", "learn2pd:filter=" + str(filter_dir(
        t, "mlp", mlp_weights(lambda w: {k: torch.full_like(v, math.nan) for k, v in w.items()})))],
     "NaN or infinite weights"),
    ("filter: truncated skops", lambda t: ["--policy", "learn2pd:filter=" + str(filter_dir(
        t, "gbdt", lambda d: truncate(d / "model.skops")))], "not a readable skops file"),
]


@pytest.mark.parametrize("name, arguments, expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_damaged_files(name, arguments, expected, tmp_path, capsys):
    assert_one_line_error(GENERATE + arguments(tmp_path), expected, capsys)


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


@pytest.mark.parametrize("damage, expected", [
    (lambda c: c.joinpath("progress.json").write_text('{"config": {'), "progress.json: not valid JSON"),
    (lambda c: c.joinpath("progress.json").write_bytes(b"\xff\xfe"), "progress.json: not UTF-8"),
    (lambda c: write_progress(c, config=DROP), "progress.json is damaged (missing config)"),
    (lambda c: write_progress(c, rng=DROP), "progress.json is damaged (missing rng)"),
    (lambda c: write_progress(c, rng=[1, 2]), "progress.json is damaged (rng"),
    (lambda c: write_progress(c, step="x"), "progress.json is damaged (step"),
    (lambda c: write_progress(c) or c.joinpath("state.safetensors").write_bytes(b"\x08\x00"), "state.safetensors: not a readable"),
    (lambda c: write_progress(c), "state.safetensors: no such file"),
    (lambda c: write_progress(c) or save_state(c, {"optimizer.0.step": torch.zeros(1)}), "no model or generator state"),
])
def test_a_damaged_checkpoint_is_one_line_before_the_data_is_prepared(damage, expected, tmp_path, capsys,
                                                                      monkeypatch):
    from unmask.contrib.train import model as training

    monkeypatch.setattr(training, "_Examples", lambda config: pytest.fail("the data was prepared"))
    checkpoint = tmp_path / "m.checkpoint"
    checkpoint.mkdir()
    damage(checkpoint)
    assert_one_line_error(["train-model", "--out", tmp_path / "m", "--resume"], expected, capsys)


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


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
    (lambda f: (f / "manifest.json").write_text("[]"), "traces format 'list'"),
    (manifest(lambda m: m.update(shards=[])), "manifest.json: damaged manifest"),
    (manifest(lambda m: m["settings"].pop("model")), "settings lack model"),
    (manifest(lambda m: m["shards"].update({"../x-0": {}})), "shard '../x-0' is no shard"),
    (lambda f: truncate(first_shard(f)), "not a readable safetensors file (a traces shard)"),
    (shard_without_labels, "not a traces shard (missing tensor(s) labels)"),
])
def test_damaged_traces_name_the_file(damage, expected, traces, tmp_path, capsys):
    damaged = traces_copy(traces, tmp_path, damage)
    assert_one_line_error(["train-filter", "--traces", damaged, "--kind", "gbdt", "--out", tmp_path / "f"],
                          expected, capsys)


@pytest.mark.parametrize("damage, expected", [
    (lambda s: (s / "config.json").write_text("{"), "config.json: not valid JSON"),
    (lambda s: (s / "config.json").write_text("[1]"), "config.json: must hold a JSON object"),
    (lambda s: (s / "config.json").write_text('{"d_model": 8}'), "config.json: missing field 'vocab_size'"),
    (lambda s: truncate(s / "model.safetensors"), "model.safetensors: not a readable safetensors file"),
    (lambda s: (s / "config.json").unlink(), "config.json: no such file"),
    (outside_link, "tokenizer.json is a symlink"),
])
def test_bad_llada_sources(damage, expected, tmp_path, capsys):
    source = llada_source(tmp_path, damage)
    assert_one_line_error(["convert-llada", source, tmp_path / "out"], expected, capsys)
    assert not (tmp_path / "out").exists()


def test_non_utf8_prompts_name_the_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert_one_line_error(["collect", "--prompts", prompts, "--out", tmp_path / "t"], "prompts.jsonl: not UTF-8",
                          capsys)


@pytest.mark.parametrize("change, expected", [
    ({"num_hidden_layers": 10**6}, "the config does not belong to these weights"),
    ({"hidden_size": 10**6, "num_attention_heads": 1, "head_dim": 10**6}, "describes at least"),
])
def test_a_config_far_larger_than_its_weights_is_refused_before_allocation(change, expected, tmp_path, capsys,
                                                                           monkeypatch):
    directory = tiny_dir(tmp_path, **change)
    monkeypatch.setattr(torch.nn.Linear, "__init__", lambda *args, **kwargs: pytest.fail("a layer was built"))
    assert_one_line_error(GENERATE + ["--model", directory], expected, capsys)


@pytest.mark.parametrize("kind, damage, expected", [
    ("mlp", mlp_header(lambda h: h["params"].update(hidden=10**9)), "but the header's width"),
    ("mlp", mlp_header(lambda h: h["params"].update(hidden="32")), "parameter hidden must be an integer"),
    ("mlp", mlp_header(lambda h: h["state"].update(width=10**9)), "but the header's width"),
    ("gbdt", inflating_skops, "inflates to 100 MB"),
])
def test_filter_sizes_are_checked_before_allocation(kind, damage, expected, tmp_path):
    import tracemalloc

    folder = filter_dir(tmp_path, kind, damage)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match=re.escape(expected)):
            unmask.decode(FakeDenoiser(), [[1, 2]], gen_length=32, block_length=32, policy=f"learn2pd:filter={folder}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_filter_parameters_are_checked_before_the_traces_load(traces, tmp_path, capsys, monkeypatch):
    from unmask.contrib.train import filters

    monkeypatch.setattr(filters, "Traces", lambda *a: pytest.fail("the traces loaded"))
    assert_one_line_error(["train-filter", "--traces", traces, "--kind", "gbdt", "--out", tmp_path / "f",
                           "--param", "max_iter=abc"], "parameter max_iter must be an integer >= 1, got 'abc'", capsys)
    with pytest.raises(ValueError, match=r"tau must be a probability in \[0, 1\]"):
        filters.train_filter(traces, "gbdt", tmp_path / "f", tau=2)
