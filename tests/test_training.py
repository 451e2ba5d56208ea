"""Reference-model training: a few steps write a loadable model; a checkpoint resumes; outputs are guarded."""

import json

import attrs
import torch
import pytest

import unmask
import unmask.contrib.train.model as training
from unmask.contrib.tasks import samples
from unmask.contrib.train.model import TrainingConfig, build_tokenizer, checkpoint_directory, train_reference_model

TINY = TrainingConfig(steps=6, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, batch_size=8,
                      arithmetic_items=50, warmup_steps=2, threads=1)


def test_one_token_per_item_symbol_and_digit():
    tokenizer = build_tokenizer(["shuffle: ada ben cal", "latin square: A B C", "A B C / B C A / C A B", "12 + 7 ="])
    assert tokenizer.convert_ids_to_tokens(tokenizer("shuffle: cal ada")["input_ids"]) == ["▁shuffle", ":", "▁cal", "▁ada"]
    assert len(tokenizer("A B C / B C A")["input_ids"]) == 7
    assert tokenizer.convert_ids_to_tokens(tokenizer("12")["input_ids"]) == ["▁", "1", "2"]
    assert tokenizer.decode(tokenizer("A B C / B C A")["input_ids"]) == "A B C / B C A"


def test_training_resumes_from_its_checkpoint_and_writes_a_loadable_model(tmp_path, monkeypatch):
    out = tmp_path / "model"
    with pytest.raises(ValueError, match="no checkpoint"):
        train_reference_model(out, TINY, progress=False, resume=True)
    # checkpoint_minutes=0: a checkpoint after every step; stop the run by failing at step 4.
    config = attrs.evolve(TINY, checkpoint_minutes=0)
    real_loss, calls = training._loss, []

    def dying_loss(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train_reference_model(out, config, progress=False)
    monkeypatch.setattr(training, "_loss", real_loss)
    progress = json.loads((checkpoint_directory(out) / "progress.json").read_text())
    assert progress["step"] == 4 and not out.exists()
    with pytest.raises(ValueError, match="pass --resume"):
        train_reference_model(out, config, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train_reference_model(out, attrs.evolve(config, hidden_size=48), progress=False, resume=True)
    train_reference_model(out, config, progress=False, resume=True)
    assert not checkpoint_directory(out).exists()
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and log[-1]["step"] == config.steps - 1
    model, tokenizer = unmask.load(str(out))
    sample = samples("shuffle", 1, 0)[0]
    result = unmask.decode(model, [tokenizer(sample.prompt)["input_ids"]], gen_length=16)
    assert result.tokens.shape == (1, 16)
    assert "unmask train-model" in (out / "README.md").read_text()


def test_training_continues_a_model_on_long_tasks_keeping_its_token_ids(tmp_path):
    first = train_reference_model(tmp_path / "first", attrs.evolve(TINY, steps=2), progress=False)
    config = attrs.evolve(TINY, steps=3, init_from=str(first), long_tasks=("chain_sum_long", "copy_long"),
                          long_task_weights=(1.0, 1.0), long_fraction=0.5, long_batch_size=2)
    second = train_reference_model(tmp_path / "second", config, progress=False)
    _, old = unmask.load(str(first))
    model, new = unmask.load(str(second))
    assert {word: new.get_vocab()[word] for word in old.get_vocab()} == old.get_vocab()
    assert {"▁running", "▁sum"} <= set(new.get_vocab()) - set(old.get_vocab())
    assert model.vocab_size == len(new) == model.model.get_input_embeddings().weight.shape[0]
    prompt = samples("chain_sum_long", 1, 0)[0].prompt
    assert new.unk_token_id not in new(prompt)["input_ids"]
    with pytest.raises(ValueError, match="another architecture: hidden_size 32 .config 48."):
        train_reference_model(tmp_path / "third", attrs.evolve(config, hidden_size=48), progress=False)
    with pytest.raises(ValueError, match="long_tasks need one weight each"):
        train_reference_model(tmp_path / "third", attrs.evolve(config, long_task_weights=(1.0,)), progress=False)


def test_a_recipe_file_or_a_models_training_json_gives_the_config_and_options_override_it(tmp_path, monkeypatch):
    from unmask.contrib import cli

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"steps": 7, "tight_fraction": 0.5, "gen_lengths": [32, 64]}))
    config = training.read_recipe(recipe)
    assert (config.steps, config.tight_fraction, config.gen_lengths) == (7, 0.5, (32, 64))
    assert config.hidden_size == TrainingConfig().hidden_size
    record = tmp_path / "training.json"
    record.write_text(json.dumps({"config": attrs.asdict(TINY), "final_loss": 1.0}))
    assert training.read_recipe(record) == TINY
    recipe.write_text(json.dumps({"steps": 7, "hiden_size": 8}))
    with pytest.raises(ValueError, match="unknown field.s. hiden_size"):
        training.read_recipe(recipe)
    recipe.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object of TrainingConfig fields"):
        training.read_recipe(recipe)

    seen = []
    monkeypatch.setattr(training, "train_reference_model", lambda out, config, **kwargs: seen.append(config) or out)
    assert cli.main(["train-model", "--out", str(tmp_path / "m"), "--recipe", str(record), "--steps", "3"]) == 0
    assert seen[-1] == attrs.evolve(TINY, steps=3)


def test_block_causal_training_masks_and_a_model_that_loads_block_causal(tmp_path):
    blocks = torch.tensor([[0, 0, 0, 1, 1, 2]])  # one padding column (block 0, not real), then positions 0-4
    real = torch.tensor([[False, True, True, True, True, True]])
    seen = training.bd3_attention(blocks, real)[0]
    noisy, clean = seen[:6], seen[6:]
    assert noisy[3].tolist() == [False, False, False, True, True, False] + [False, True, True, False, False, False]
    assert clean[3].tolist() == [False] * 6 + [False, True, True, True, True, False]
    assert not clean[:, :6].any()  # the clean copy never sees noisy tokens
    out = train_reference_model(tmp_path / "block", attrs.evolve(TINY, steps=3, block_size=4), progress=False)
    model, tokenizer = unmask.load(str(out))
    assert model.block_size == 4
    result = unmask.decode(model, [tokenizer(samples("copy", 1, 0)[0].prompt)["input_ids"]], gen_length=8,
                           block_length=4)
    assert result.components["cache"]["name"] == "exact" and not (result.tokens == model.mask_token_id).any()


def test_corruption_replaces_a_share_of_the_visible_answer_tokens_and_puts_a_loss_on_every_visible_one():
    from unmask.contrib.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model, mask_id = tiny_model("llama", tokenizer), tokenizer.mask_token_id
    vocabulary = model.get_output_embeddings().weight.shape[0]
    noisy = torch.randint(2, vocabulary, (64, 40), generator=torch.Generator().manual_seed(0))
    visible = torch.rand(noisy.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    noisy[~visible] = mask_id
    config = attrs.evolve(TINY, corrupt_fraction=0.3)
    clean, answer = noisy.clone(), torch.ones_like(visible)
    corrupted, weighted = training._corrupted(noisy, visible, config, model, mask_id, torch.Generator().manual_seed(2),
                                              clean, answer)
    changed = corrupted != noisy
    assert not (changed & ~visible).any() and torch.equal(weighted, visible)  # masks stay; every visible one counts
    assert 0.2 < changed.sum() / visible.sum() < 0.3  # (a random token may equal the one it replaces)
    assert not (corrupted[visible] == mask_id).any()
    same, none = training._corrupted(noisy, visible, TINY, model, mask_id, torch.Generator().manual_seed(2),
                                     clean, answer)
    assert torch.equal(same, noisy) and not none.any()  # corrupt_fraction 0: the masking objective alone
    # From the answer: every replacement is a token of the same row's answer positions.
    clean[:, 20:] = 3  # (answer positions 0-19 only, below)
    answer[:, 20:] = False
    copied, _ = training._corrupted(noisy, visible, attrs.evolve(config, corrupt_source="answer"), model, mask_id,
                                    torch.Generator().manual_seed(2), clean, answer)
    moved = copied != noisy
    assert moved.any()
    rows, columns = moved.nonzero(as_tuple=True)
    assert all(copied[r, c] in clean[r, :20] for r, c in zip(rows.tolist(), columns.tolist()))
    with pytest.raises(ValueError, match="corrupt_fraction"):
        TrainingConfig(corrupt_fraction=1.5)
