"""The bundled reference dLLM (registered as the model ``reference``): loading and its model card.

``unmask train-model --out DIR`` rebuilds it (:mod:`unmask.contrib.train.model`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from unmask._files import write_text_atomically
from unmask.contrib.tasks import TRAIN_SEED
from unmask.contrib.train.model import TrainingConfig, build_model, build_tokenizer, train_reference_model
from unmask.core.plugins import Registrar, hookimpl

__all__ = ["REFERENCE_MODEL_DIR", "TrainingConfig", "build_tokenizer", "build_model", "train_reference_model",
           "load_reference_model", "write_model_card"]

REFERENCE_MODEL_DIR = Path(__file__).with_name("reference_model")


def write_model_card(directory: str | Path, evaluation: str = "") -> None:
    """README.md beside the weights: what the model is, how it was trained, what it scores."""
    directory = Path(directory)
    record = json.loads((directory / "training.json").read_text())
    config, model = record["config"], json.loads((directory / "config.json").read_text())
    card = f"""# unmask reference dLLM

A {record['parameters'] / 1e6:.2f}M-parameter masked-diffusion language model: `LlamaForCausalLM` with
`is_causal: false` ({config['num_layers']} layers, hidden {config['hidden_size']}, {config['num_heads']} heads,
RoPE theta {config['rope_theta']}, vocabulary {model['vocab_size']}: one word, list item, symbol or digit per
token), trained with LLaDA's SFT objective on the tasks {', '.join(config['tasks'])} (`unmask.contrib.tasks`,
items from seed {TRAIN_SEED} upward; evaluate on seeds below it). Multi-answer tasks drew a fresh valid answer
for every training row. Prompts are the tasks' prompts (`unmask.contrib.tasks.samples(task, n, seed)[i].prompt`);
answers are padded with `<|endoftext|>` to the canvas length.

## Training

    unmask train-model --out unmask/contrib/reference_model

{config['steps']} steps of {config['batch_size']} rows (fewer on canvases over 64 tokens), AdamW lr
{config['learning_rate']}; {config['tight_fraction']:.0%} of the steps on tight canvases (answer + 1-8 end-of-text), the rest on
{', '.join(map(str, config['gen_lengths']))} tokens; seed {config['seed']}, {config['threads']} CPU threads.
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
