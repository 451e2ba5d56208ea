"""dParallel's certainty-forcing pieces (shared/METHODS.md E.3, E.5): the complementary masks and the loss."""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.contrib.train.distill import certainty_forcing_loss, certainty_masks


@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.integers(1, 48), st.integers(1, 16),
       st.integers(0, 2**32 - 1))
@settings(max_examples=80, deadline=None)
def test_the_pair_covers_the_active_block_once_and_masks_everything_after_it(lengths, answer, block, seed):
    width = max(lengths) + answer
    prompts = torch.tensor(lengths)
    first, second = certainty_masks(prompts, width, block, torch.Generator().manual_seed(seed))
    columns = torch.arange(width)
    for row, prompt in enumerate(lengths):
        assert not first[row, :prompt].any() and not second[row, :prompt].any()  # prompts never masked
        differ = (first[row] ^ second[row]).nonzero().flatten()
        both = (first[row] & second[row]).nonzero().flatten()
        # The active block: where exactly one copy masks; everything after it: masked in both.
        start = int(differ.min()) if len(differ) else int(both.min()) if len(both) else width
        assert (start - prompt) % block == 0  # a block boundary of the answer
        end = width if not len(both) else int(both.min())
        assert end - start <= block or end == width
        assert not (first[row] | second[row])[prompt:start].any()  # earlier blocks clean
        assert (first[row] ^ second[row])[start:end].all()  # disjoint and covering inside the block
        assert (first[row] & second[row])[columns >= end].all()  # later blocks always masked


def test_the_entropy_term_counts_only_predictions_that_are_already_right():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=generator)
    targets = logits.argmax(-1).clone()
    targets[0, :3] = (targets[0, :3] + 1) % 11  # three wrong predictions
    masked = torch.ones(2, 6, dtype=torch.bool)
    loss, parts = certainty_forcing_loss(logits, targets, masked, beta=2.0)
    assert parts["correct"] == 9
    right = masked.clone()
    right[0, :3] = False
    log_p = torch.log_softmax(logits[right] / 0.5, -1)
    assert abs(parts["entropy"] - float(-(log_p.exp() * log_p).sum(-1).mean())) < 1e-6
    ce = torch.nn.functional.cross_entropy(logits[masked], targets[masked])
    assert abs(float(loss) - (float(ce) + 2.0 * parts["entropy"])) < 1e-5
    # Wrong everywhere: cross-entropy alone.
    loss, parts = certainty_forcing_loss(logits, (logits.argmax(-1) + 1) % 11, masked, beta=2.0)
    assert parts["correct"] == 0 and parts["entropy"] == 0.0
    # Sharper right predictions lower the entropy term: what the objective pushes towards.
    _, sharper = certainty_forcing_loss(logits * 3, targets, masked, beta=2.0)
    assert sharper["entropy"] < certainty_forcing_loss(logits, targets, masked, beta=2.0)[1]["entropy"]


def _small(**changes):
    from unmask.contrib.train.distillation import DistillConfig

    settings = dict(tasks=("copy", "sort"), items=6, gen_length=16, block_length=8, steps=3, batch_size=4,
                    warmup_steps=1)
    return DistillConfig(**{**settings, **changes})


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(str(next(Path(directory).glob("*.safetensors"))))


def test_distill_writes_a_model_that_loads_and_is_deterministic(tmp_path):
    import unmask
    from unmask.contrib.train.distillation import distill

    first, second = distill(tmp_path / "a", _small(), progress=False), distill(tmp_path / "b", _small(), progress=False)
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (first / "training_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and all(math.isfinite(row["loss"]) for row in log)
    rows = [json.loads(line) for line in (first / "trajectories.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(row["answer"]) == 16 for row in rows)
    model, tokenizer = unmask.load(str(first))
    assert unmask.decode(model, [rows[0]["prompt"]], gen_length=16, block_length=8).tokens.shape == (1, 16)
    assert not (tmp_path / "a.checkpoint").exists() and not (tmp_path / "a.trajectories.jsonl").exists()


def test_an_interrupted_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from unmask.contrib.train import distillation

    whole = distillation.distill(tmp_path / "whole", _small(checkpoint_minutes=0.0), progress=False)
    real, calls = distillation.pair_loss, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(distillation, "pair_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distillation.distill(tmp_path / "cut", _small(checkpoint_minutes=0.0), progress=False)
    monkeypatch.setattr(distillation, "pair_loss", real)
    with pytest.raises(ValueError, match="unfinished run"):
        distillation.distill(tmp_path / "cut", _small(checkpoint_minutes=0.0), progress=False)
    resumed = distillation.distill(tmp_path / "cut", _small(checkpoint_minutes=0.0), progress=False, resume=True)
    a, b = _weights(whole), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_distill_settings_are_clear_errors(tmp_path):
    from unmask.contrib.train.distillation import distill

    with pytest.raises(ValueError, match="items"):
        _small(items=0)
    with pytest.raises(Exception, match="no_such"):
        distill(tmp_path / "x", _small(policy="no_such"), progress=False)


def test_only_correct_keeps_the_trajectories_the_task_scores_correct(tmp_path):
    import attrs

    from types import SimpleNamespace

    import unmask
    from unmask.contrib.models.transformers import decode_answers
    from unmask.contrib.tasks import score
    from unmask.contrib.train.distillation import _prompts, trajectories

    model, tokenizer = unmask.load("reference")
    config = _small(tasks=("copy", "sort", "shuffle"), items=9, gen_length=32, block_length=32, policy="topk:k=8")
    every, kept = (trajectories(model, tokenizer, c, progress=False)
                   for c in (config, attrs.evolve(config, only_correct=True)))
    samples = {tuple(tokenizer(text)["input_ids"]): sample for text, sample in _prompts(config)}

    def right(row):  # as the benchmarks score: the answer before its first EOS, special tokens kept
        answer = row["answer"]
        length = answer.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in answer else len(answer)
        result = SimpleNamespace(tokens=torch.tensor([answer]), answer_lengths=torch.tensor([length]))
        return score(samples[tuple(row["prompt"])], decode_answers(tokenizer, result)[0])

    assert kept == [row for row in every if right(row)] and 0 < len(kept) < len(every)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "copy: a b"}\n')
    with pytest.raises(ValueError, match="only_correct needs the tasks' prompts"):
        _prompts(_small(prompts=str(prompts), only_correct=True))

