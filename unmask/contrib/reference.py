"""The bundled reference dLLM: a small bidirectional Llama trained with LLaDA's SFT objective on the tasks.

``unmask train-model --out DIR`` rebuilds it: a byte-level BPE (digits split one by one) trained on task
text, then masked-diffusion training: prompts are never masked; the answer, padded with end-of-text to
``gen_length``, is masked with ratio t ~ U(eps, 1) per sample, and cross-entropy on masked positions is
weighted by 1/t (Nie et al. 2025, arXiv 2502.09992, SFT).
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from attrs import asdict, field, frozen

from unmask._files import check_output_directory, staged_directory, write_text_atomically
from unmask.contrib.tasks import DEFAULT_TASKS, TRAIN_SEED, samples
from unmask.core.plugins import Registrar, hookimpl

__all__ = ["REFERENCE_MODEL_DIR", "TrainingConfig", "build_tokenizer", "build_model", "train_reference_model",
           "load_reference_model", "write_model_card"]

REFERENCE_MODEL_DIR = Path(__file__).with_name("reference_model")
EOS, MASK = "<|endoftext|>", "[MASK]"


@frozen(kw_only=True)
class TrainingConfig:
    tasks: tuple[str, ...] = field(default=DEFAULT_TASKS, converter=tuple)
    task_weights: tuple[float, ...] = (0.2, 0.2, 0.3, 0.3)  # longer answers (sorting, reversal) more often
    samples_per_task: int = 50_000
    # Answers are padded with end-of-text to one of these lengths per batch (raised to fit the batch's
    # longest answer): short canvases are cheap and nearer to what EoTP leaves after its cut; long ones
    # teach the model the 128- and 256-token canvases of the benchmarks.
    gen_lengths: tuple[int, ...] = (16, 32, 64, 128, 256)
    gen_length_weights: tuple[float, ...] = (0.2, 0.2, 0.4, 0.12, 0.08)
    vocab_size: int = 384
    hidden_size: int = 256
    num_layers: int = 4
    # Many narrow heads and a short RoPE wavelength: with bidirectional attention, RoPE is the model's
    # only sense of order ("7 - 2" vs "2 - 7"); in a 600-step probe on chain_sum, 16 heads of 16 dims at
    # theta 100 answered twice as many items as 4 heads of 64 at theta 10000.
    num_heads: int = 16
    rope_theta: float = 100.0
    intermediate_size: int = 768
    steps: int = 3200
    batch_size: int = 64  # rows per step on canvases up to 64 tokens
    learning_rate: float = 1.5e-3
    warmup_steps: int = 100
    bf16: bool = True  # autocast on the CPU: about 25% faster here
    weight_decay: float = 0.01
    # LLaDA's eps; larger than its 1e-3 because 1/t weights up to 1000 made this small model's gradients
    # noisy enough to stall it.
    min_mask_ratio: float = 0.05
    seed: int = 0
    threads: int = 2


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE whose digits stay single tokens, with end-of-text and [MASK] specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, MASK], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, mask_token=MASK, pad_token=EOS)


def build_model(tokenizer: Any, config: TrainingConfig) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=512, is_causal=False,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        mask_token_id=tokenizer.mask_token_id, bos_token_id=None,
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(model_config)


def write_model_card(directory: str | Path, evaluation: str = "") -> None:
    """README.md beside the weights: what the model is, how it was trained, what it scores."""
    directory = Path(directory)
    record = json.loads((directory / "training.json").read_text())
    config = record["config"]
    card = f"""# unmask reference dLLM

A {record['parameters'] / 1e6:.1f}M-parameter masked-diffusion language model: `LlamaForCausalLM` with
`is_causal: false` ({config['num_layers']} layers, hidden {config['hidden_size']}, {config['num_heads']} heads,
vocabulary {config['vocab_size']}), trained with LLaDA's SFT objective on the tasks {', '.join(config['tasks'])}
(`unmask.contrib.tasks`, reasoning-gym items from seed {TRAIN_SEED} upward; evaluate on seeds below it).
Prompts are the tasks' rendered questions (`unmask.contrib.tasks.samples(task, n, seed)[i].prompt`);
answers are padded with `<|endoftext|>` to the canvas length.

## Training

    unmask train-model --out unmask/contrib/reference_model

{config['steps']} steps of {config['batch_size']} samples (fewer on canvases over 64 tokens), AdamW lr
{config['learning_rate']}, answer canvases of {', '.join(map(str, config['gen_lengths']))} tokens; seed {config['seed']}, {config['threads']} CPU threads.
Final loss (smoothed) {record['final_loss']}; {record['train_minutes']} minutes on {record['machine']['cpu']}
with torch {record['torch']}. The loss curve is `training_log.jsonl`; all settings are in `training.json`.
"""
    if evaluation:
        card += "\n## Evaluation\n\n" + evaluation.strip() + "\n"
    write_text_atomically(directory / "README.md", card)


@hookimpl
def unmask_register_models(registry: Registrar) -> None:
    registry.add("reference", load_reference_model)


def load_reference_model(device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The bundled model as ``(model, tokenizer)``, read from the installed package (no network).

    Source: unmask, trained with LLaDA's SFT objective (arXiv 2502.09992); see its model card.
    """
    from unmask.contrib.transformers import load

    if not (REFERENCE_MODEL_DIR / "config.json").exists():
        raise FileNotFoundError(f"the bundled reference model is missing from {REFERENCE_MODEL_DIR}; "
                                "rebuild it with: unmask train-model --out " + str(REFERENCE_MODEL_DIR))
    return load(REFERENCE_MODEL_DIR, device=device)


def _encode(tokenizer: Any, items: Sequence[Any], gen_length: int) -> list[tuple[list[int], list[int]]]:
    encoded = []
    for item in items:
        prompt = tokenizer(item.prompt)["input_ids"]
        answer = tokenizer(item.answer)["input_ids"]
        if len(answer) >= gen_length:
            raise ValueError(f"an answer of {len(answer)} tokens does not fit gen_length={gen_length}: {item.answer!r}")
        encoded.append((prompt, answer))
    return encoded


def _batch(pairs: Sequence[tuple[list[int], list[int]]], eos: int, gen_length: int) -> tuple[torch.Tensor, ...]:
    """Left-padded prompts followed by answers padded with end-of-text: the decoding canvas's layout."""
    width = max(len(prompt) for prompt, _ in pairs)
    rows, masks = [], []
    for prompt, answer in pairs:
        padding = width - len(prompt)
        rows.append([eos] * padding + prompt + answer + [eos] * (gen_length - len(answer)))
        masks.append([0] * padding + [1] * (len(prompt) + gen_length))
    input_ids, attention_mask = torch.tensor(rows), torch.tensor(masks)
    return input_ids, attention_mask, (attention_mask.cumsum(-1) - 1).clamp(min=0), width


def _loss(model: Any, batch: Sequence[tuple[list[int], list[int]]], config: TrainingConfig, mask_id: int,
          eos: int, gen_length: int, generator: torch.Generator) -> torch.Tensor:
    input_ids, attention_mask, position_ids, start = _batch(batch, eos, gen_length)
    answers = input_ids[:, start:]
    ratio = config.min_mask_ratio + (1 - config.min_mask_ratio) * torch.rand(len(batch), 1, generator=generator)
    masked = torch.rand(answers.shape, generator=generator) < ratio  # (B, gen_length)
    noisy = input_ids.clone()
    noisy[:, start:] = answers.masked_fill(masked, mask_id)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        logits = model(input_ids=noisy, attention_mask=attention_mask, position_ids=position_ids).logits[:, start:]
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), answers, reduction="none")  # (B, G)
    return (losses * masked / ratio).sum() / answers.numel()


def train_reference_model(out: str | Path, config: TrainingConfig = TrainingConfig(), *, progress: bool = True,
                          overwrite: bool = False) -> Path:
    """Train the reference model and write it (weights, tokenizer, card, loss log) to ``out`` atomically."""
    from tqdm import tqdm

    check_output_directory(out, command="train-model", overwrite=overwrite)  # before the hour of training
    out = Path(out)
    torch.set_num_threads(config.threads)
    rng = random.Random(config.seed)
    started = time.time()
    if len(config.task_weights) != len(config.tasks):
        raise ValueError(f"task_weights has {len(config.task_weights)} entries for {len(config.tasks)} tasks")
    items = {task: samples(task, config.samples_per_task, TRAIN_SEED) for task in config.tasks}
    texts = [text for task_items in items.values() for s in task_items[::10] for text in (s.prompt, s.answer)]
    tokenizer = build_tokenizer(texts, config.vocab_size)
    data = {task: _encode(tokenizer, task_items, max(config.gen_lengths)) for task, task_items in items.items()}
    model = build_model(tokenizer, config)
    # Eager attention trains ~1.3x faster than SDPA at these sizes on the CPU; it is not saved with the
    # weights, so the loaded model uses transformers' default again.
    model.set_attn_implementation("eager")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.98))

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(config.seed)
    log: list[dict[str, float]] = []
    running = None
    bar = tqdm(range(config.steps), desc="training", disable=not progress, mininterval=5)
    for step in bar:
        # Tasks mixed within a batch; one answer length per batch, so every length is seen.
        drawn_length = rng.choices(config.gen_lengths, weights=config.gen_length_weights)[0]
        # About the same number of canvas tokens per step: fewer rows on long canvases.
        rows = max(8, config.batch_size * 64 // max(64, drawn_length))
        tasks = rng.choices(config.tasks, weights=config.task_weights, k=rows)
        batch = [data[task][rng.randrange(len(data[task]))] for task in tasks]
        gen_length = max(drawn_length, 1 + max(len(answer) for _, answer in batch))
        loss = _loss(model, batch, config, tokenizer.mask_token_id, tokenizer.eos_token_id, gen_length, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == config.steps - 1:
            log.append({"step": step, "loss": round(running, 5), "lr": scheduler.get_last_lr()[0],
                        "elapsed_s": round(time.time() - started, 1)})
            bar.set_postfix(loss=f"{running:.4f}")
    model.eval()

    with staged_directory(out, command="train-model", overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
        record = {
            "config": asdict(config), "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": log[-1]["loss"], "train_minutes": round((time.time() - started) / 60, 1),
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": config.threads},
            "torch": torch.__version__,
        }
        (staging / "training.json").write_text(json.dumps(record, indent=2))
        write_model_card(staging)
    return out
