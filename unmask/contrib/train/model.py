"""Train the bundled reference dLLM: a small bidirectional Llama, LLaDA's SFT objective, the task suite.

Prompts are never masked; the answer, padded with end-of-text to the canvas length, is masked with ratio
t ~ U(eps, 1) per row and the cross-entropy on masked positions is weighted by 1/t (Nie et al. 2025, arXiv
2502.09992, SFT). Multi-answer tasks draw their target uniformly among the valid answers for every row, so
the model learns the answers' distribution, not one of them. One list item, symbol or digit is one token.

Training checkpoints every few minutes into ``OUT.checkpoint/`` (safetensors and JSON, no pickle);
``resume=True`` continues from there, and the folder is removed once the model is written.
"""

from __future__ import annotations

import json
import math
import platform
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import attrs
import torch
from attrs import asdict, define, field, frozen

from unmask._files import check_output_directory, read_json, read_safetensors, staged_directory
from unmask.core.validators import number

if TYPE_CHECKING:
    from unmask.contrib.tasks import Sample

__all__ = ["TrainingConfig", "read_recipe", "build_tokenizer", "build_model", "train_reference_model", "EOS", "MASK"]

EOS, MASK, UNKNOWN = "<|endoftext|>", "[MASK]", "[UNK]"


def _suite() -> tuple[str, ...]:
    from unmask.contrib.tasks import SUITE

    return SUITE


@frozen(kw_only=True)
class TrainingConfig:
    tasks: tuple[str, ...] = field(factory=_suite, converter=tuple)
    # The tasks whose answers depend most on each position (sorting, puzzles, arithmetic) are drawn more often.
    task_weights: tuple[float, ...] = (0.6, 1.0, 1.2, 1.0, 1.0, 1.0, 1.0, 1.6, 1.0, 1.2)
    arithmetic_items: int = 20_000  # reasoning-gym items per arithmetic task (list tasks are drawn per row)
    # Most steps give each row a canvas of its own answer plus 1-8 end-of-text tokens: the loss lands on
    # answers (three times the steps per second of 64-token canvases), and the canvases EoTP cuts down to
    # the answer's end look familiar; the rest pad to one of gen_lengths, the benchmarks' canvases.
    tight_fraction: float = 0.8
    gen_lengths: tuple[int, ...] = (32, 64, 128, 256)
    gen_length_weights: tuple[float, ...] = (0.3, 0.45, 0.15, 0.1)
    hidden_size: int = 192
    num_layers: int = 4
    # Many narrow heads and a short RoPE wavelength: with bidirectional attention RoPE is the model's only
    # sense of order, and theta 10,000 with few heads learned lengths but not copying.
    num_heads: int = 12
    rope_theta: float = 100.0
    intermediate_size: int = 576
    steps: int = 6_000
    batch_size: int = 128  # rows per step on canvases up to 64 tokens (fewer on longer ones)
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    # bf16 autocast on the CPU: about 25% faster where the CPU has bf16 instructions (AVX-512 BF16, AMX);
    # on an AVX2-only CPU it is emulated, and a step took 20 s instead of 0.8 s.
    bf16: bool = False
    weight_decay: float = 0.01
    min_mask_ratio: float = 0.05  # LLaDA's eps; 1e-3 made the 1/t weights too noisy for a small model
    seed: int = 0
    threads: int = 2
    checkpoint_minutes: float = 4.0
    # Long-answer tasks get steps of their own (a long row would pad a whole batch of short ones): a share
    # long_fraction of the steps draws long_batch_size rows of them, on tight canvases or long_gen_length.
    long_tasks: tuple[str, ...] = field(default=(), converter=tuple)
    long_task_weights: tuple[float, ...] = field(default=(), converter=tuple)
    long_fraction: float = 0.0
    long_batch_size: int = 24
    long_gen_length: int = 256
    # A model directory (or "reference", the bundled one) to continue from: its weights, and its token ids
    # with the words of new tasks appended; its architecture must match the fields above.
    init_from: str | None = None
    # Block-causal training (a block-diffusion model, shared/METHODS.md F.0): blocks of this many positions
    # from position 0, each row as a noisy and a clean copy side by side (BD3-LM), its blocks masked with a
    # ratio of their own, and a twin row with the complementary mask, so every answer token has a loss.
    block_size: int | None = None
    # LLaDA 2.1's token-to-token objective beside the masking one: this share of the visible answer tokens is
    # replaced by random tokens and every visible answer position carries a loss too, so that the model's
    # predictions at visible positions are corrections (what the `edit` policy reads). 0: masks only.
    corrupt_fraction: float = field(default=0.0, validator=number(minimum=0.0, maximum=1.0))
    # Where replacements come from: "random" tokens of the vocabulary, or "answer": tokens copied from another
    # position of the same answer (the duplicates that parallel decoding writes on multi-answer tasks).
    corrupt_source: str = field(default="random", validator=attrs.validators.in_(("random", "answer")))


def read_recipe(path: str | Path, kind: Any = None) -> Any:
    """The config (``kind``, default TrainingConfig) a JSON file names: an object of its fields (the others keep
    their defaults), or a model's training.json, whose "config" is the recipe the model was trained with."""
    kind = TrainingConfig if kind is None else kind
    data = read_json(path, what="--recipe")
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ValueError(f"--recipe {path}: expected a JSON object of {kind.__name__} fields")
    known = {a.name for a in kind.__attrs_attrs__}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--recipe {path}: unknown field(s) {', '.join(unknown)}; {kind.__name__} has "
                         f"{', '.join(sorted(known))}")
    try:
        return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"--recipe {path}: {error}") from None


def build_tokenizer(texts: Sequence[str], base: Any = None) -> Any:
    """A word-level tokenizer: one word, list item, symbol, punctuation mark or digit per token. With
    ``base`` (a tokenizer this function built), its ids stay and the new words of ``texts`` are appended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token=UNKNOWN))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(pattern=":", behavior="isolated"),
    ])
    backend.decoder = decoders.Metaspace()
    if base is None:
        backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[EOS, MASK, UNKNOWN],
                                                                     show_progress=False))
    else:
        vocab = dict(base.get_vocab())
        words = {piece for text in texts for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)}
        vocab.update({word: len(vocab) + i for i, word in enumerate(sorted(words - set(vocab)))})
        backend.model = models.WordLevel(vocab=vocab, unk_token=UNKNOWN)
        backend.add_special_tokens([EOS, MASK, UNKNOWN])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, mask_token=MASK, pad_token=EOS,
                                   unk_token=UNKNOWN)


def source_directory(init_from: str) -> Path:
    """The model directory ``init_from`` names: "reference" (the bundled model) or a path."""
    if init_from == "reference":
        from unmask.contrib.models.reference import REFERENCE_MODEL_DIR

        return REFERENCE_MODEL_DIR
    if not (Path(init_from) / "config.json").is_file() or not (Path(init_from) / "tokenizer.json").is_file():
        raise ValueError(f"init_from={init_from!r}: not a model directory of train-model (config.json and "
                         "tokenizer.json), nor 'reference'")
    return Path(init_from)


def _continued_model(tokenizer: Any, config: TrainingConfig) -> Any:
    """The model of ``config.init_from`` with rows for the tokenizer's new words (drawn like transformers'
    resizing: around the mean of the trained embeddings)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(source_directory(config.init_from)))
    source = model.config
    expected = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
                "num_attention_heads": config.num_heads, "intermediate_size": config.intermediate_size}
    differ = [f"{key} {getattr(source, key)} (config {value})" for key, value in expected.items()
              if getattr(source, key) != value]
    if differ:
        raise ValueError(f"init_from={config.init_from!r} has another architecture: {', '.join(differ)}")
    torch.manual_seed(config.seed)
    model.resize_token_embeddings(len(tokenizer))
    return model


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


class _Examples:
    """Training rows (prompt ids, target ids) from the tasks' "train" part only: list tasks made per row from
    seeds at TRAIN_SEED and up, with a fresh valid answer each time; arithmetic from a pool of reasoning-gym
    items."""

    def __init__(self, config: TrainingConfig) -> None:
        from unmask.contrib.tasks import TRAIN_SEED, get_task, samples
        from unmask.contrib.tasks.gym import GymTask
        from unmask.contrib.tasks.lists import ITEMS, SYMBOLS

        self.config = config
        self.pools = {task: samples(task, config.arithmetic_items, TRAIN_SEED, part="train") for task in config.tasks
                      if isinstance(get_task(task), GymTask)}
        corpus = [text for task in config.tasks + config.long_tasks
                  for s in samples(task, 2000, TRAIN_SEED, part="train") for text in (s.prompt, s.answer)]
        corpus.append(" ".join(ITEMS + SYMBOLS + tuple("0123456789")))
        base = None
        if config.init_from is not None:
            from transformers import AutoTokenizer

            base = AutoTokenizer.from_pretrained(str(source_directory(config.init_from)))
        self.tokenizer = build_tokenizer(corpus, base)

    def draw_text(self, rng: random.Random, rows: int, long: bool = False) -> list[tuple[Sample, str]]:
        """``rows`` training items (of the long tasks if ``long``) and a valid answer of each (drawn afresh on
        multi-answer tasks)."""
        from unmask.contrib.tasks import TRAIN_SEED, samples, valid_answer

        tasks, weights = ((self.config.long_tasks, self.config.long_task_weights) if long
                          else (self.config.tasks, self.config.task_weights))
        drawn = []
        for task in rng.choices(tasks, weights=weights, k=rows):
            if task in self.pools:
                sample = self.pools[task][rng.randrange(len(self.pools[task]))]
            else:
                sample = samples(task, 1, TRAIN_SEED + rng.randrange(10**9), part="train")[0]
            drawn.append((sample, valid_answer(sample, rng)))
        return drawn

    def draw(self, rng: random.Random, rows: int, long: bool = False) -> list[tuple[list[int], list[int]]]:
        return [(self.tokenizer(sample.prompt)["input_ids"], self.tokenizer(answer)["input_ids"])
                for sample, answer in self.draw_text(rng, rows, long)]


def _batch(pairs: Sequence[tuple[list[int], list[int]]], eos: int,
           gen_lengths: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Left-padded prompts followed by answers padded with end-of-text to each row's canvas length: the
    decoding canvas's layout. Columns past a row's canvas are hidden from it, as after an EoTP cut."""
    width, canvas = max(len(prompt) for prompt, _ in pairs), max(gen_lengths)
    rows, masks = [], []
    for (prompt, answer), length in zip(pairs, gen_lengths):
        padding = width - len(prompt)
        rows.append([eos] * padding + prompt + answer + [eos] * (canvas - len(answer)))
        masks.append([0] * padding + [1] * (len(prompt) + length) + [0] * (canvas - length))
    input_ids, attention_mask = torch.tensor(rows), torch.tensor(masks)
    return input_ids, attention_mask, (attention_mask.cumsum(-1) - 1).clamp(min=0), width


def _loss(model: Any, pairs: Sequence[tuple[list[int], list[int]]], config: TrainingConfig, mask_id: int,
          eos: int, gen_lengths: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    input_ids, attention_mask, position_ids, start = _batch(pairs, eos, gen_lengths)
    answers, inside = input_ids[:, start:], attention_mask[:, start:].bool()
    ratio = config.min_mask_ratio + (1 - config.min_mask_ratio) * torch.rand(len(pairs), 1, generator=generator)
    masked = (torch.rand(answers.shape, generator=generator) < ratio) & inside  # (B, canvas)
    noisy = input_ids.clone()
    noisy[:, start:], visible = _corrupted(answers.masked_fill(masked, mask_id), inside & ~masked, config, model,
                                           mask_id, generator, answers, inside)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        logits = model(input_ids=noisy, attention_mask=attention_mask, position_ids=position_ids).logits[:, start:]
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), answers, reduction="none")  # (B, G)
    return (losses * masked / ratio + losses * visible).sum() / inside.sum()


def _corrupted(noisy: torch.Tensor, visible: torch.Tensor, config: TrainingConfig, model: Any, mask_id: int,
               generator: torch.Generator, clean: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``noisy`` with ``config.corrupt_fraction`` of its ``visible`` answer tokens replaced (by random tokens,
    never the mask, or by tokens of another position of the ``clean`` row's ``answer``), and where the visible
    positions carry a loss: all of them when corrupting, else none."""
    if not config.corrupt_fraction:
        return noisy, torch.zeros_like(visible)
    corrupt = visible & (torch.rand(noisy.shape, generator=generator) < config.corrupt_fraction)
    if config.corrupt_source == "answer":
        weights = answer.float() + (~answer.any(1, keepdim=True)).float()  # (a row with no answer: any column)
        tokens = clean.gather(1, torch.multinomial(weights, noisy.shape[1], replacement=True, generator=generator))
    else:
        tokens = torch.randint(0, model.get_output_embeddings().weight.shape[0] - 1, noisy.shape, generator=generator)
        tokens += (tokens >= mask_id).long()  # (skips the mask id)
    return torch.where(corrupt, tokens, noisy), visible


def bd3_attention(blocks: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, 2L, 2L) bool over [noisy copy | clean copy] of a canvas whose positions fall in ``blocks`` (B, L):
    a noisy position sees the real positions of its own noisy block and of the clean blocks before it; a
    clean one the clean blocks up to its own. Padding queries see themselves (no empty softmax)."""
    same, before = blocks[:, :, None] == blocks[:, None, :], blocks[:, None, :] < blocks[:, :, None]
    seen = torch.cat([torch.cat([same, before], 2), torch.cat([torch.zeros_like(same), same | before], 2)], 1)
    seen &= real.repeat(1, 2)[:, None, :]
    return seen | torch.eye(2 * blocks.shape[1], dtype=torch.bool, device=blocks.device)[None]


def _block_loss(model: Any, pairs: Sequence[tuple[list[int], list[int]]], config: TrainingConfig, mask_id: int,
                eos: int, gen_lengths: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """The block-causal objective: the noisy copy's block b sees itself and the clean copy's blocks before b;
    the clean copy is block-causal on itself. Loss on the noisy copy's masked answer tokens, weighted by
    the inverse of their block's mask ratio."""
    input_ids, real, positions, start = _batch(pairs, eos, gen_lengths)
    size, (rows, width) = config.block_size, input_ids.shape
    blocks = positions // size  # (B, L), per row from its position 0
    answer = real.bool() & (torch.arange(width) >= start)[None]
    per_block = config.min_mask_ratio + (1 - config.min_mask_ratio) * torch.rand(
        rows, int(blocks.max()) + 1, generator=generator)
    ratio = per_block.gather(1, blocks)  # (B, L)
    drawn = torch.rand(input_ids.shape, generator=generator) < ratio
    masked = torch.cat([drawn, ~drawn]) & answer.repeat(2, 1)  # the twin row masks the complement
    ratio = torch.cat([ratio, 1 - ratio]).clamp(min=config.min_mask_ratio)
    clean, real, blocks, positions = (t.repeat(2, 1) for t in (input_ids, real, blocks, positions))
    noisy, visible = _corrupted(clean.masked_fill(masked, mask_id), answer.repeat(2, 1) & ~masked, config, model,
                                mask_id, generator, clean, answer.repeat(2, 1))
    seen = bd3_attention(blocks, real.bool())
    bias = torch.zeros(seen.shape, dtype=torch.float32).masked_fill(~seen, torch.finfo(torch.float32).min)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        logits = model(input_ids=torch.cat([noisy, clean], 1), attention_mask=bias[:, None],
                       position_ids=torch.cat([positions, positions], 1)).logits[:, :width]
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), clean, reduction="none")  # (2B, L)
    return (losses * masked / ratio + losses * visible).sum() / (2 * answer.sum())


def warmup_cosine(config: Any, floor: float = 0.05) -> Any:
    """The learning-rate factor per step: linear warm-up over ``config.warmup_steps``, then a cosine decay to
    ``floor`` at ``config.steps``."""
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return factor


def optimizer_step(loss: torch.Tensor, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Back-propagate ``loss``, clip the gradients' norm at 1, step the optimizer and the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


@define
class Run:
    """What a training run carries from step to step, and what a checkpoint restores of it."""

    optimizer: Any
    generator: torch.Generator  # the masks' noise
    rng: random.Random  # the batches
    state: dict[str, Any]  # step, log, running loss, elapsed time (PROGRESS_KEYS) and what a command adds
    scheduler: Any
    started: float  # time.time() at the run's start, less what earlier sessions of it took
    saved: float = field(factory=time.time)  # the last checkpoint (or the start)

    def elapsed(self) -> float:
        return time.time() - self.started

    def save_if_due(self, step: int, config: Any, checkpoint: Path, model: Any) -> None:
        """A checkpoint after ``step`` when ``config.checkpoint_minutes`` have passed since the last (never after
        the last step: the finished model is written instead)."""
        if time.time() - self.saved > 60 * config.checkpoint_minutes and step < config.steps - 1:
            self.state.update(step=step + 1, rng=self.rng.getstate(), elapsed_s=self.elapsed())
            _save_checkpoint(checkpoint, model, self.optimizer, self.generator, self.state)
            self.saved = time.time()


def begin_run(model: Any, config: Any, checkpoint: Path, saved_state: Any = None, floor: float = 0.05,
              **recorded: Any) -> Run:
    """``model`` in training mode with AdamW (``config.learning_rate``, ``weight_decay``), generators seeded from
    ``config.seed``, a warm-up/cosine schedule to ``floor``, and a fresh state holding ``recorded``; or all of
    it as ``saved_state`` (``_read_checkpoint``) left it."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    state: dict[str, Any] = {"config": json.loads(json.dumps(asdict(config))), "step": 0, "log": [],
                             "running": None, "elapsed_s": 0.0, **recorded}
    if saved_state is not None:
        state, tensors = saved_state
        _apply_checkpoint(checkpoint, tensors, model, optimizer, generator)
        rng.setstate(_as_tuples(state["rng"]))
    for group in optimizer.param_groups:  # what LambdaLR needs to start at a later step
        group.setdefault("initial_lr", group["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config, floor), last_epoch=state["step"] - 1)
    return Run(optimizer, generator, rng, state, scheduler, started=time.time() - state["elapsed_s"])


def checkpoint_directory(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


def _save_checkpoint(directory: Path, model: Any, optimizer: Any, generator: torch.Generator,
                     progress: dict[str, Any]) -> None:
    """Weights, optimizer moments and the noise generator as safetensors; step, data RNG and log as JSON."""
    from safetensors.torch import save_file

    tensors = {f"model.{name}": value.detach().contiguous() for name, value in model.state_dict().items()}
    for index, state in enumerate(optimizer.state_dict()["state"].values()):
        tensors.update({f"optimizer.{index}.{key}": value.contiguous() for key, value in state.items()})
    tensors["generator"] = generator.get_state()
    with staged_directory(directory, command="train-model checkpoint") as staging:
        save_file(tensors, staging / "state.safetensors")
        (staging / "progress.json").write_text(json.dumps(progress))


PROGRESS_KEYS = ("config", "step", "log", "running", "elapsed_s", "rng")


def _read_checkpoint(directory: Path, config: TrainingConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A checkpoint's progress and tensors, checked before any data is prepared: a damaged file is one
    error naming it."""
    path = directory / "progress.json"
    progress = read_json(path, what="a training checkpoint's progress")
    missing = [key for key in PROGRESS_KEYS if not isinstance(progress, dict) or key not in progress]
    if missing:
        raise ValueError(f"--resume: {path} is damaged (missing {', '.join(missing)})")
    if not isinstance(progress["step"], int) or not 0 <= progress["step"] <= config.steps \
            or not isinstance(progress["log"], list) or not isinstance(progress["rng"], list):
        raise ValueError(f"--resume: {path} is damaged (step, log or rng of the wrong type)")
    if progress["config"] != json.loads(json.dumps(asdict(config))):
        recorded = progress["config"] if isinstance(progress["config"], dict) else {}
        changed = sorted(k for k, v in asdict(config).items() if recorded.get(k) != json.loads(json.dumps(v)))
        raise ValueError(f"--resume: {directory} was trained with other settings ({', '.join(changed)} differ)")
    try:
        random.Random().setstate(_as_tuples(progress["rng"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"--resume: {path} is damaged (rng: {error})") from None
    tensors = read_safetensors(directory / "state.safetensors", what="a training checkpoint's state")
    if "generator" not in tensors or not any(name.startswith("model.") for name in tensors):
        raise ValueError(f"--resume: {directory / 'state.safetensors'} is damaged (no model or generator state)")
    return progress, tensors


def _apply_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], model: Any, optimizer: Any,
                      generator: torch.Generator) -> None:
    path = directory / "state.safetensors"
    weights = {name[6:]: value for name, value in tensors.items() if name.startswith("model.")}
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(weights)) + sorted(
        name for name in set(expected) & set(weights) if expected[name].shape != weights[name].shape)
    if wrong:
        raise ValueError(f"--resume: {path} does not fit the model ({len(wrong)} tensor(s) missing, unexpected or "
                         f"of another shape, e.g. {wrong[0]})")
    model.load_state_dict(weights)
    state = optimizer.state_dict()
    parameters = list(model.parameters())  # the optimizer's order
    for index, parameter in enumerate(state["param_groups"][0]["params"]):
        moments = {key: tensors.get(f"optimizer.{index}.{key}") for key in ("step", "exp_avg", "exp_avg_sq")}
        if any(value is None for value in moments.values()) or any(
                moments[key].shape != parameters[index].shape for key in ("exp_avg", "exp_avg_sq")):
            raise ValueError(f"--resume: {path} is damaged (optimizer state of parameter {index} missing or of "
                             "another shape)")
        state["state"][parameter] = moments
    optimizer.load_state_dict(state)
    try:
        generator.set_state(tensors["generator"])
    except (RuntimeError, ValueError, TypeError) as error:
        raise ValueError(f"--resume: {path} is damaged (generator: {' '.join(str(error).split())})") from None


def train_reference_model(out: str | Path, config: TrainingConfig = TrainingConfig(), *, progress: bool = True,
                          overwrite: bool = False, resume: bool = False) -> Path:
    """Train the reference model and write it (weights, tokenizer, card, loss log) to ``out``."""
    from tqdm import tqdm

    from unmask.contrib.models.reference import write_model_card

    check_output_directory(out, command="train-model", overwrite=overwrite)  # before the hour of training
    if len(config.task_weights) != len(config.tasks):
        raise ValueError(f"task_weights has {len(config.task_weights)} entries for {len(config.tasks)} tasks")
    if len(config.long_task_weights) != len(config.long_tasks) or (config.long_fraction > 0) != bool(config.long_tasks):
        raise ValueError("long_tasks need one weight each (long_task_weights) and a long_fraction above 0, and "
                         "long_fraction needs long_tasks")
    if config.init_from is not None:
        source_directory(config.init_from)
    checkpoint = checkpoint_directory(out)
    if resume and not (checkpoint / "progress.json").is_file():
        raise ValueError(f"--resume: no checkpoint at {checkpoint}")
    if not resume and checkpoint.exists():
        raise ValueError(f"{checkpoint} holds an unfinished run: pass --resume to continue it, or remove it")
    saved_state = _read_checkpoint(checkpoint, config) if resume else None  # before the data is prepared
    torch.set_num_threads(config.threads)
    examples = _Examples(config)
    tokenizer = examples.tokenizer
    model = build_model(tokenizer, config) if config.init_from is None else _continued_model(tokenizer, config)
    # Eager attention trains ~1.3x faster than SDPA at these sizes on the CPU; it is not saved with the
    # weights, so the loaded model uses transformers' default again.
    model.set_attn_implementation("eager")
    run = begin_run(model, config, checkpoint, saved_state)
    optimizer, generator, rng, state, scheduler = run.optimizer, run.generator, run.rng, run.state, run.scheduler
    bar = tqdm(range(state["step"], config.steps), desc="training", disable=not progress, mininterval=5,
               initial=state["step"], total=config.steps)
    for step in bar:
        long = config.long_fraction > 0 and rng.random() < config.long_fraction  # (the old stream otherwise)
        tight = rng.random() < config.tight_fraction
        if long:
            drawn, rows = (0 if tight else config.long_gen_length), config.long_batch_size
        else:
            drawn = 0 if tight else rng.choices(config.gen_lengths, weights=config.gen_length_weights)[0]
            rows = config.batch_size if drawn <= 64 else max(8, config.batch_size * 64 // drawn)
        pairs = examples.draw(rng, rows, long)
        longest = max(len(answer) for _, answer in pairs)
        if tight:  # each row its own canvas: its answer and 1-8 end-of-text tokens
            gen_lengths = [len(answer) + rng.randint(1, 8) for _, answer in pairs]
        else:
            gen_lengths = [max(drawn, longest + 1)] * len(pairs)
        objective = _loss if config.block_size is None else _block_loss
        loss = objective(model, pairs, config, tokenizer.mask_token_id, tokenizer.eos_token_id, gen_lengths, generator)
        optimizer_step(loss, model, optimizer, scheduler)
        running = state["running"]
        state["running"] = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == config.steps - 1:
            state["log"].append({"step": step, "loss": round(state["running"], 5), "lr": scheduler.get_last_lr()[0],
                                 "elapsed_s": round(run.elapsed(), 1)})
            bar.set_postfix(loss=f"{state['running']:.4f}")
        run.save_if_due(step, config, checkpoint, model)
    model.eval()

    with staged_directory(out, command="train-model", overwrite=overwrite) as staging:
        if config.block_size is not None:  # what unmask.load reads to attend block-causally
            model.config.block_size = config.block_size
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in state["log"]))
        record = {
            "config": asdict(config), "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": state["log"][-1]["loss"], "train_minutes": round(run.elapsed() / 60, 1),
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": config.threads},
            "torch": torch.__version__,
        }
        (staging / "training.json").write_text(json.dumps(record, indent=2))
        write_model_card(staging)
    shutil.rmtree(checkpoint, ignore_errors=True)  # this run's own checkpoints
    return Path(out)


def _as_tuples(value: Any) -> Any:
    """JSON turned random.getstate()'s tuples into lists; setstate needs them back."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
