"""Tiny random transformers checkpoints built from configs, for tests that must not download anything."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

__all__ = ["ARCHITECTURES", "BLOCK_LAYOUTS", "tiny_tokenizer", "tiny_model", "tiny_denoiser", "save_tiny",
           "save_tiny_block_diffusion"]

ARCHITECTURES = ("llama", "qwen2", "modernbert")
SPECIALS = ["<|endoftext|>", "[MASK]", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


CHARACTERS = string.ascii_lowercase + string.digits + " +-=*,.?"


def tiny_tokenizer(*, chat: bool = True, characters: str = CHARACTERS) -> Any:
    """A character-level tokenizer (by default letters, digits, space, punctuation) with [MASK], an EOS and a
    chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + list(dict.fromkeys(characters))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join without spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", mask_token="[MASK]", pad_token="<|endoftext|>",
        unk_token="?", additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(architecture: str, tokenizer: Any, *, seed: int = 0) -> Any:
    """A randomly initialised model of ``architecture`` (bidirectional where it is a decoder)."""
    from transformers import LlamaConfig, LlamaForCausalLM, ModernBertConfig, ModernBertForMaskedLM
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shared = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id,
    )
    torch.manual_seed(seed)
    if architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**shared, num_key_value_heads=2, is_causal=False)).eval()
    if architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shared, num_key_value_heads=2, is_causal=False,
                                            tie_word_embeddings=False)).eval()
    if architecture == "modernbert":
        return ModernBertForMaskedLM(ModernBertConfig(**shared, bos_token_id=None, cls_token_id=None,
                                                      sep_token_id=None)).eval()
    raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")


def tiny_denoiser(architecture: str = "llama", *, seed: int = 0, block_size: int | None = None,
                  characters: str = CHARACTERS) -> Any:
    """A tiny model wrapped as a ``DenoiserModel`` that takes KV caches (``llama`` or ``qwen2``); with
    ``block_size`` it attends block-causally (blocks of that many positions from position 0); its tokenizer is
    ``tiny_tokenizer(characters=characters)``."""
    from unmask.contrib.models.transformers import SHIFTED_MODEL_TYPES, TransformersDenoiser

    tokenizer = tiny_tokenizer(characters=characters)
    model = tiny_model(architecture, tokenizer, seed=seed)
    return TransformersDenoiser(
        model=model, mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
        shift_logits=model.config.model_type in SHIFTED_MODEL_TYPES, block_size=block_size,
    )


def save_tiny(architecture: str, directory: str | Path, *, seed: int = 0) -> Path:
    """Build and ``save_pretrained`` a tiny model with its tokenizer; returns the directory."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(architecture, tokenizer, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


BLOCK_LAYOUTS = ("sdar", "fast_dllm_v2", "llada2")
# LLaDA 2.0's stand-in remote code: a Llama under its model type, which only trust_remote_code loads.
_LLADA2_CODE = {
    "configuration_llada2_moe.py": (
        "from transformers import LlamaConfig\n\n\nclass LLaDA2MoeConfig(LlamaConfig):\n"
        "    model_type = 'llada2_moe'\n"),
    "modeling_llada2_moe.py": (
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_llada2_moe import LLaDA2MoeConfig\n\n\n"
        "class LLaDA2MoeModelLM(LlamaForCausalLM):\n    config_class = LLaDA2MoeConfig\n"),
}


def save_tiny_block_diffusion(layout: str, directory: str | Path, *, block_size: int = 4, seed: int = 0) -> Path:
    """A tiny random checkpoint laid out as a block-diffusion family's (config.json fields as published):
    ``sdar`` (Qwen3 weights, ``model_type`` "sdar", ``block_size``), ``fast_dllm_v2`` (Qwen2 weights,
    ``bd_size``) or ``llada2`` (``model_type`` "llada2_moe" with stand-in remote code, no block size)."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config
    from transformers import Qwen3ForCausalLM

    if layout not in BLOCK_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(BLOCK_LAYOUTS)}, got {layout!r}")
    tokenizer = tiny_tokenizer()
    shared = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    directory = Path(directory)
    if layout == "sdar":
        model = Qwen3ForCausalLM(Qwen3Config(**shared, head_dim=16))
        extra = {"model_type": "sdar", "architectures": ["SDARForCausalLM"], "block_size": block_size,
                 "mask_token_id": tokenizer.mask_token_id,
                 "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig",
                              "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"}}
    elif layout == "fast_dllm_v2":
        model = Qwen2ForCausalLM(Qwen2Config(**shared, tie_word_embeddings=False))
        extra = {"model_type": "Fast_dLLM_QWen", "architectures": ["Fast_dLLM_QwenForCausalLM"], "bd_size": block_size,
                 "auto_map": {"AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"}}
    else:
        model = LlamaForCausalLM(LlamaConfig(**shared))
        extra = {"model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"],
                 "mask_token_id": tokenizer.mask_token_id,
                 "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                              "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"}}
        for name, code in _LLADA2_CODE.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(code)
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **extra}, indent=2))
    return directory
