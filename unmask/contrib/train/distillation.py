"""``unmask distill``: dParallel's certainty-forcing distillation of a bundled model, end to end.

1. Trajectories: the base model decodes prompts from the tasks' training part (or a JSONL file of prompts)
   with an unmask policy (default vanilla ``topk``, one token per step); its own answers, EOS padding
   included, are the targets. They are written once (``OUT.trajectories.jsonl``) and reused on ``--resume``.
2. Fine-tuning: every weight, with the certainty-forcing loss of ``unmask.contrib.train.distill`` on a
   complementary pair of semi-autoregressive masks per row; checkpoints every few minutes
   (``OUT.checkpoint``), a loss log, a progress bar; deterministic for a seed.

The result is a model directory that ``unmask.load`` reads. Chen et al. 2025, arXiv 2509.26488 (shared
METHODS.md E.3); docs/distill.md has the recipe and the measurements.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from attrs import asdict, field, frozen, validators

from unmask._files import check_output_directory, staged_directory, write_text_atomically
from unmask.contrib.train.distill import certainty_forcing_loss, certainty_masks
from unmask.contrib.train.model import _batch, _read_checkpoint, begin_run, checkpoint_directory, optimizer_step

__all__ = ["DistillConfig", "trajectories", "distill"]


def _suite() -> tuple[str, ...]:
    from unmask.contrib.tasks import SUITE

    return SUITE


@frozen(kw_only=True)
class DistillConfig:
    base: str = "reference"  # a registered model name or a model directory (transformers layout)
    tasks: tuple[str, ...] = field(factory=_suite, converter=tuple)
    prompts: str | None = None  # a JSONL file of {"prompt": ...} rows instead of the tasks' training items
    items: int = field(validator=validators.gt(0), default=1024)  # trajectory prompts (spread over the tasks)
    policy: str = "topk"  # how the base model writes its trajectories
    # Keep only the trajectories whose answers the task scores correct (prompts from the tasks only), so the
    # model is not taught its own mistakes.
    only_correct: bool = field(default=False, validator=validators.instance_of(bool))
    gen_length: int = field(validator=validators.gt(0), default=128)
    block_length: int = field(validator=validators.gt(0), default=32)
    beta: float = 2.0  # the entropy term's weight (the authors' LLaDA value)
    temperature: float = 0.5  # of the entropy term's softmax
    steps: int = field(validator=validators.gt(0), default=1000)
    # rows per step (each as its complementary pair: twice as many in the forward)
    batch_size: int = field(validator=validators.gt(0), default=16)
    learning_rate: float = 1e-4
    warmup_steps: int = 30
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = field(validator=validators.gt(0), default=2)
    checkpoint_minutes: float = 4.0


def _prompts(config: DistillConfig) -> list[tuple[str, Any]]:
    """The trajectory prompts, each with its task item (None for prompts from a file)."""
    if config.prompts is not None:
        if config.only_correct:
            raise ValueError("only_correct needs the tasks' prompts, whose answers can be scored; not --prompts")
        rows = [json.loads(line) for line in Path(config.prompts).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        if not rows or not all(isinstance(row, dict) and isinstance(row.get("prompt"), str) for row in rows):
            raise ValueError(f"prompts={config.prompts!r}: expected JSON lines of {{\"prompt\": \"...\"}}")
        return [(row["prompt"], None) for row in rows[:config.items]]
    from unmask.contrib.tasks import TRAIN_SEED, samples

    each = math.ceil(config.items / len(config.tasks))
    items = [(sample.prompt, sample) for task in config.tasks
             for sample in samples(task, each, TRAIN_SEED, part="train")]
    return items[:config.items]


def trajectories(model: Any, tokenizer: Any, config: DistillConfig, *, progress: bool = True,
                 rows_per_decode: int = 64) -> list[dict[str, list[int]]]:
    """The base model's own answers: ``{"prompt": ids, "answer": gen_length ids}`` per prompt (EOS padding
    included: the padding is a target too); with ``only_correct`` those the task scores correct."""
    from tqdm import tqdm

    from unmask.contrib.models.transformers import decode_answers
    from unmask.contrib.tasks import score
    from unmask.core.engine import decode

    items = _prompts(config)
    prompts = [tokenizer(text)["input_ids"] for text, _ in items]
    out = []
    for first in tqdm(range(0, len(prompts), rows_per_decode), desc="trajectories", disable=not progress):
        batch = prompts[first:first + rows_per_decode]
        result = decode(model, batch, gen_length=config.gen_length, block_length=config.block_length,
                        policy=config.policy, seed=config.seed)
        # (scored as the benchmarks score: unmask.contrib.eval.runner)
        right = ([score(sample, text) for (_, sample), text in zip(items[first:], decode_answers(tokenizer, result))]
                 if config.only_correct else [True] * len(batch))
        out.extend({"prompt": prompt, "answer": answer}
                   for prompt, answer, keep in zip(batch, result.tokens.tolist(), right) if keep)
    if not out:
        raise ValueError("only_correct: the base model answered none of the trajectory prompts correctly")
    return out


def pair_loss(model: Any, rows: Sequence[dict[str, list[int]]], config: DistillConfig, mask_id: int, eos: int,
              generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The certainty-forcing loss of a batch, each row as its complementary pair in one forward."""
    pairs = [(row["prompt"], row["answer"]) for row in rows]
    input_ids, attention_mask, position_ids, start = _batch(pairs, eos, [config.gen_length] * len(pairs))
    width = input_ids.shape[1]
    first, second = certainty_masks(torch.full((len(pairs),), start), width, config.block_length, generator)
    masked = torch.cat([first, second])
    targets = input_ids.repeat(2, 1)
    logits = model(input_ids=targets.masked_fill(masked, mask_id), attention_mask=attention_mask.repeat(2, 1),
                   position_ids=position_ids.repeat(2, 1)).logits
    # Both copies' masked positions are averaged together: the two losses of the paper, summed, up to a
    # factor that the learning rate absorbs.
    return certainty_forcing_loss(logits[:, start:], targets[:, start:], masked[:, start:], beta=config.beta,
                                  temperature=config.temperature)


def distill(out: str | Path, config: DistillConfig = DistillConfig(), *, progress: bool = True,
            overwrite: bool = False, resume: bool = False) -> Path:
    """Generate trajectories with the base model, fine-tune it with certainty forcing, write it to ``out``."""
    from tqdm import tqdm

    from unmask.contrib.models.transformers import load
    from unmask.core.plugins import create

    check_output_directory(out, command="distill", overwrite=overwrite)
    create("policies", config.policy)  # a bad spec is an error now, not after the model loads
    checkpoint, recorded = checkpoint_directory(out), Path(str(out) + ".trajectories.jsonl")
    if resume and not (checkpoint / "progress.json").is_file() and not recorded.is_file():
        raise ValueError(f"--resume: no checkpoint at {checkpoint} and no trajectories at {recorded}")
    if not resume and (checkpoint.exists() or recorded.exists()):
        raise ValueError(f"{checkpoint} or {recorded} holds an unfinished run: pass --resume to continue it, or "
                         "remove them")
    saved_state = _read_checkpoint(checkpoint, config) if resume and (checkpoint / "progress.json").is_file() else None
    torch.set_num_threads(config.threads)
    adapter, tokenizer = load(config.base)
    trajectory_s = None  # (not known when a resumed run reads them back)
    if resume and recorded.is_file():
        rows = [json.loads(line) for line in recorded.read_text().splitlines() if line.strip()]
    else:
        began = time.time()
        with torch.no_grad():
            rows = trajectories(adapter, tokenizer, config, progress=progress)
        write_text_atomically(recorded, "".join(json.dumps(row) + "\n" for row in rows))
        trajectory_s = round(time.time() - began, 1)
    model = adapter.model
    model.set_attn_implementation("eager")  # faster than SDPA at this size on the CPU (not saved)
    run = begin_run(model, config, checkpoint, saved_state, floor=0.1, trajectory_s=trajectory_s)
    optimizer, generator, rng, state, scheduler = run.optimizer, run.generator, run.rng, run.state, run.scheduler
    bar = tqdm(range(state["step"], config.steps), desc="distilling", disable=not progress, mininterval=5,
               initial=state["step"], total=config.steps)
    for step in bar:
        loss, parts = pair_loss(model, rng.sample(rows, min(config.batch_size, len(rows))), config,
                                adapter.mask_token_id, adapter.eos_token_id, generator)
        optimizer_step(loss, model, optimizer, scheduler)
        running = state["running"]
        state["running"] = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 20 == 0 or step == config.steps - 1:
            state["log"].append({"step": step, "loss": round(state["running"], 5), **parts,
                                 "lr": scheduler.get_last_lr()[0], "elapsed_s": round(run.elapsed(), 1)})
            bar.set_postfix(loss=f"{state['running']:.4f}", entropy=f"{parts['entropy']:.3f}")
        run.save_if_due(step, config, checkpoint, model)
    model.eval()
    with staged_directory(out, command="distill", overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in state["log"]))
        (staging / "trajectories.jsonl").write_text(recorded.read_text())
        record = {"config": asdict(config), "objective": "certainty forcing (dParallel, arXiv 2509.26488)",
                  "trajectories": len(rows), "final_loss": state["log"][-1]["loss"],
                  "train_minutes": round(run.elapsed() / 60, 1),
                  "trajectory_minutes": round(state["trajectory_s"] / 60, 1) if state.get("trajectory_s") else None,
                  "machine": {"cpu": platform.processor() or platform.machine(), "threads": config.threads},
                  "torch": torch.__version__}
        (staging / "training.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(checkpoint, ignore_errors=True)  # this run's own checkpoints
    recorded.unlink()  # (copied into the model directory)
    return Path(out)
