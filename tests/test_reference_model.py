"""The bundled reference model: loads from the package with no network, answers task prompts, benches."""

import json

import pytest

import unmask

from unmask.contrib.eval.bench import bench
from unmask.contrib.cli import main
from unmask.contrib.models.reference import REFERENCE_MODEL_DIR, load_reference_model
from unmask.contrib.tasks import DEFAULT_TASKS, samples, score
from unmask.contrib.models.transformers import decode_text


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


def test_files_load_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_reference_model()
    assert (REFERENCE_MODEL_DIR / "model.safetensors").stat().st_size <= 20 * 2**20
    assert model.model.config.is_causal is False and not model.shift_logits
    assert tokenizer.mask_token == "[MASK]" and tokenizer.eos_token == "<|endoftext|>"
    card = (REFERENCE_MODEL_DIR / "README.md").read_text()
    assert "unmask train-model" in card


def test_vanilla_decoding_answers_held_out_samples(reference):
    # The shipped model scores 94.6% over the suite with vanilla decoding (50 held-out samples per task, card);
    # this guards against a broken load or prompt path.
    model, tokenizer = reference
    correct = 0
    for task in DEFAULT_TASKS:
        items = samples(task, 6, seed=500)
        answers, _ = decode_text(model, tokenizer, [s.prompt for s in items], gen_length=64, block_length=32)
        correct += sum(score(s, a) for s, a in zip(items, answers))
    assert correct >= 50  # of 60


def test_generate_prints_the_decoded_answer(reference, capsys):
    model, tokenizer = reference
    item = samples("chain_sum", 1, seed=3)[0]
    expected, _ = decode_text(model, tokenizer, [item.prompt], gen_length=64, block_length=32)
    assert main(["generate", item.prompt]) == 0
    assert capsys.readouterr().out.strip() == expected[0]


def test_bench_rows(reference):
    model, tokenizer = reference
    rows = bench(model, tokenizer, tasks=["chain_sum", "sort"], n=4, seed=0,
                 policies=["topk", "oracle"], stops=[None, "eotp"], progress=False)
    assert len(rows) == 2 * 2 * 3  # (policy, stop) x (two tasks + mean)
    keys = {"policy", "stop", "cache", "task", "n", "accuracy", "nfe_mean", "tokens_per_forward", "wall_s",
            "tokens_per_s"}
    assert all(keys <= set(row) for row in rows)
    by = {(r["policy"], r["stop"], r["task"]): r for r in rows}
    # The oracle reproduces vanilla decoding, in fewer forwards.
    assert by[("oracle", "none", "mean")]["accuracy"] == by[("topk", "none", "mean")]["accuracy"]
    assert by[("oracle", "none", "mean")]["nfe_mean"] < by[("topk", "none", "mean")]["nfe_mean"]
    assert by[("topk", "eotp", "mean")]["nfe_mean"] < by[("topk", "none", "mean")]["nfe_mean"]


def test_bench_cli_json(capsys):
    assert main(["bench", "--tasks", "basic_arithmetic", "--n", "3", "--policy", "threshold:tau=0.9",
                 "--stop", "eotp", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["task"] == "basic_arithmetic" and rows[0]["n"] == 3 and rows[-1]["task"] == "mean"
    assert rows[0]["components"]["policy"]["params"] == {"tau": 0.9}


def test_bench_cli_runs_exactly_the_cells_named(capsys):
    assert main(["bench", "--tasks", "chain_sum", "--n", "2", "--gen-length", "32", "--block-length", "16", "--json",
                 "--cell", "topk none none", "--cell", "threshold:tau=0.9 eotp dual"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["policy"], r["stop"], r["cache"], r["task"]) for r in rows] == [
        ("topk", "none", "none", "chain_sum"), ("topk", "none", "none", "mean"),
        ("threshold:tau=0.9", "eotp", "dual", "chain_sum"), ("threshold:tau=0.9", "eotp", "dual", "mean")]
    assert rows[0]["baseline"] and rows[2]["nfe_speedup"] > 1


def test_batched_and_cached_decodes_agree_with_refresh(reference):
    model, tokenizer = reference
    prompts = [s.prompt for s in samples("shuffle", 3, seed=9)]
    plain, _ = decode_text(model, tokenizer, prompts, gen_length=64, block_length=32, policy="threshold:tau=0.9")
    cached, _ = decode_text(model, tokenizer, prompts, gen_length=64, block_length=32, policy="threshold:tau=0.9",
                            cache="dual:refresh_every=1")
    assert plain == cached


def test_the_block_diffusion_variant_ships_and_answers_through_generate(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = unmask.load("reference-block")
    assert model.block_size == 32 and tokenizer.mask_token == "[MASK]"
    items = [item for task in ("copy", "reverse", "shuffle") for item in samples(task, 4, seed=700)]
    answers, result = decode_text(model, tokenizer, [s.prompt for s in items], gen_length=32, block_length=32)
    assert result.components["cache"]["name"] == "exact"
    assert sum(score(s, a) for s, a in zip(items, answers)) >= 10  # of 12
    assert main(["generate", "--model", "reference-block", "shuffle: ada ben cal dov"]) == 0
    assert sorted(capsys.readouterr().out.split()) == ["ada", "ben", "cal", "dov"]
