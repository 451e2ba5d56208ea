"""The bundled reference dLLM, a plug-in of its own: the model ``reference``, its block-diffusion variant
``reference-block`` and the Learn2PD filters trained on it (``mlp``, ``gbdt``), with their model cards.

``unmask train-model --out DIR`` rebuilds the model (:mod:`unmask.contrib.train.model`), ``unmask collect``
and ``unmask train-filter`` the filters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from unmask._files import write_text_atomically
from unmask.core.plugins import Registrar, hookimpl

__all__ = ["REFERENCE_MODEL_DIR", "REFERENCE_BLOCK_DIR", "FILTERS_DIR", "load_reference_model",
           "load_reference_block_model", "mlp_filter", "gbdt_filter", "write_model_card"]

REFERENCE_MODEL_DIR = Path(__file__).with_name("reference_model")
REFERENCE_BLOCK_DIR = Path(__file__).with_name("reference_block")
FILTERS_DIR = REFERENCE_MODEL_DIR / "filters"


def write_model_card(directory: str | Path, evaluation: str = "") -> None:
    """README.md beside the weights: what the model is, how it was trained, what it scores."""
    from unmask.contrib.tasks import EVAL_SHARE, TRAIN_SEED

    directory = Path(directory)
    record = json.loads((directory / "training.json").read_text())
    config, model = record["config"], json.loads((directory / "config.json").read_text())
    origin = f"from the model {config['init_from']!r}" if config.get("init_from") else "from scratch"
    block = config.get("block_size")
    attention = (f"block-causal attention over blocks of {block} positions from position 0 (`block_size` in its "
                 "config; a block-diffusion model, docs/block-diffusion.md)" if block else "`is_causal: false`")
    objective = ("the block-diffusion objective (noisy and clean copies, a mask ratio per block, complementary "
                 "twin rows)" if block else "LLaDA's SFT objective")
    if config.get("init_from"):
        start = "the bundled model (`reference`)" if config["init_from"] == "reference" else repr(config["init_from"])
        rebuild = (f"Continued from {start}; with that model in place, from this model's `training.json`:\n\n"
                   "    unmask train-model --recipe training.json --out DIR")
    else:
        rebuild = "    unmask train-model --out DIR   # the default recipe is this model's"
    card = f"""# unmask reference dLLM

A {record['parameters'] / 1e6:.2f}M-parameter masked-diffusion language model: `LlamaForCausalLM` with
{attention} ({config['num_layers']} layers, hidden {config['hidden_size']}, {config['num_heads']} heads,
RoPE theta {config['rope_theta']}, vocabulary {model['vocab_size']}: one word, list item, symbol or digit per
token), trained {origin} with {objective} on the tasks {', '.join(config['tasks'])}
(`unmask.contrib.tasks`). Items were held out by content: every prompt belongs to one part of its task's
prompt space, fixed by a hash of the task and the prompt's text (`unmask.contrib.tasks.split_of`); the model
saw only prompts of the train part (items from seed {TRAIN_SEED} upward), and `bench`, `ablate`, `export-tasks`
and lm-eval draw only the evaluation part ({EVAL_SHARE:.0%} of each task's prompts), so no evaluated prompt
was trained on, whatever the seed. Multi-answer tasks drew a fresh valid answer for every training row.
Prompts are the tasks' prompts (`unmask.contrib.tasks.samples(task, n, seed)[i].prompt`); answers are padded with `<|endoftext|>` to the canvas length.

## Training

{rebuild}

{config['steps']} steps of {config['batch_size']} rows (fewer on canvases over 64 tokens), AdamW lr
{config['learning_rate']}; {config['tight_fraction']:.0%} of the steps give each row a canvas of its own answer plus 1-8
end-of-text tokens (the canvas an EoTP cut leaves), the rest a canvas of {', '.join(map(str, config['gen_lengths']))}
tokens; seed {config['seed']}, {config['threads']} CPU threads.
Final loss (smoothed) {record['final_loss']}; {record['train_minutes']} minutes on {record['machine']['cpu']}
with torch {record['torch']}. The loss curve is `training_log.jsonl`; all settings are in `training.json`.
"""
    if evaluation:
        card += "\n## Evaluation\n\n" + evaluation.strip() + "\n"
    write_text_atomically(directory / "README.md", card)


@hookimpl
def unmask_register_models(registry: Registrar) -> None:
    registry.add("reference", load_reference_model)
    registry.add("reference-block", load_reference_block_model)


@hookimpl
def unmask_register_trained_filters(registry: Registrar) -> None:
    registry.add("mlp", mlp_filter)
    registry.add("gbdt", gbdt_filter)


def mlp_filter() -> Any:
    """Learn2PD's filter (the block's confidences -> 32 -> 32), trained on the reference model's decodes
    (the oracle's, a filter's and a threshold's; docs/adaptive.md).

    Bao et al. 2025, arXiv 2509.25188; its traces and metrics are in the filter's ``filter.json``.
    """
    return _shipped_filter("mlp")


def gbdt_filter() -> Any:
    """Gradient-boosted trees over per-position statistics and token conflicts, trained on the reference
    model's decodes (the oracle's, a filter's and a threshold's; docs/adaptive.md).

    Source: unmask, a Learn2PD filter variant (arXiv 2509.25188); its traces and metrics are in ``filter.json``.
    """
    return _shipped_filter("gbdt")


def _shipped_filter(name: str) -> Any:
    from unmask.filters.store import load_filter

    return load_filter(FILTERS_DIR / name)


def load_reference_model(device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The bundled model as ``(model, tokenizer)``, read from the installed package (no network).

    Source: unmask, trained with LLaDA's SFT objective (arXiv 2502.09992); see its model card.
    """
    return _load_bundled(REFERENCE_MODEL_DIR, "--out " + str(REFERENCE_MODEL_DIR), device)


def load_reference_block_model(device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The bundled model fine-tuned block-causal (blocks of 32), as ``(model, tokenizer)``; decoded block by
    block with the exact cache (docs/block-diffusion.md).

    Source: unmask, the block-diffusion objective of BD3-LMs (arXiv 2503.09573) as SDAR trains it
    (arXiv 2510.06303); see its model card.
    """
    return _load_bundled(REFERENCE_BLOCK_DIR, "--recipe recipes/reference-block.json --out " + str(REFERENCE_BLOCK_DIR),
                         device)


def _load_bundled(directory: Path, rebuild: str, device: str | torch.device) -> tuple[Any, Any]:
    from unmask.contrib.models.transformers import load

    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"a bundled model is missing from {directory}; rebuild it with: "
                                f"unmask train-model {rebuild}")
    return load(directory, device=device)
