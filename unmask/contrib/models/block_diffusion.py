"""Block-diffusion checkpoints (SDAR, Fast-dLLM v2, LLaDA 2.0) recognised from their config.json.

SDAR and Fast-dLLM v2 are Qwen3 and Qwen2.5 weights under another ``model_type``: they load natively
through transformers' Qwen3/Qwen2 classes, and the adapter adds the block-causal mask (their own
modelling code is never run). LLaDA 2.0 is a mixture of experts transformers has no class for: it needs
its remote code, and so the user's ``trust_remote_code``. shared/METHODS.md F gives each family's fields.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

__all__ = ["Family", "FAMILIES", "family_of", "load_block_diffusion", "mask_id_of"]


@frozen
class Family:
    name: str
    native: str | None  # the transformers architecture the weights load into, None: remote code only
    shift_logits: bool  # Fast-dLLM v2 keeps the AR shift: the logit at i - 1 predicts i
    block_field: str | None  # where config.json keeps the block size (LLaDA 2.0: a decode argument)
    mask_token_id: int | None  # the published checkpoints' ids, used when config and tokenizer name none
    mask_tokens: tuple[str, ...]


FAMILIES = {
    "sdar": Family("SDAR", "qwen3", False, "block_size", 151669, ("<|MASK|>", "<MASK>")),
    "fast_dllm_v2": Family("Fast-dLLM v2", "qwen2", True, "bd_size", 151665, ("|<MASK>|",)),
    "llada2": Family("LLaDA 2.0", None, False, None, 156895, ("<|mask|>",)),
    # unmask's own: a Llama trained block-causally (train-model with block_size, e.g. reference-block).
    "llama": Family("block-causal Llama", "llama", False, "block_size", None, ()),
}
# Fields of these configs that the native Qwen classes do not know.
_FOREIGN = {"model_type", "architectures", "auto_map", "block_size", "bd_size", "transformers_version"}


def family_of(config: dict[str, Any]) -> Family | None:
    """The block-diffusion family a raw config.json describes: ``model_type`` "sdar", a ``bd_size`` field
    (Fast-dLLM v2), ``model_type`` "llada2_moe", a Llama with a ``block_size``; None for any other model."""
    model_type = str(config.get("model_type") or "").lower()
    if model_type == "sdar":
        return FAMILIES["sdar"]
    if "bd_size" in config:
        return FAMILIES["fast_dllm_v2"]
    if model_type == "llada2_moe":
        return FAMILIES["llada2"]
    if model_type == "llama" and "block_size" in config:
        return FAMILIES["llama"]
    return None


def load_block_diffusion(source: str, config: dict[str, Any], family: Family, *, trust_remote_code: bool,
                         block_size: int | None, dtype: Any, device_map: Any,
                         hub: dict[str, Any]) -> tuple[Any, Any, int]:
    """(transformers model, tokenizer, block size) of a block-diffusion checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config
    from transformers import Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    # LLaDA 2.0 takes its block length at decode time; 32 is its generate default.
    size = config.get(family.block_field) if family.block_field else (block_size or 32)
    if family.block_field and block_size is not None and block_size != size:
        raise ValueError(f"block_size={block_size}: {family.name} checkpoint {source} was trained with blocks of "
                         f"{size} ({family.block_field} in config.json)")
    if size is None:
        raise ValueError(f"--model {source}: config.json has no {family.block_field} ({family.name}'s block size)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"--model {source}: {family.block_field} in config.json must be a positive integer, "
                         f"got {size!r}")
    if family.native is None:
        if not trust_remote_code:
            raise ValueError(f"the model at {source} is {family.name}, which transformers has no class for: it runs "
                             "the checkpoint's own code; pass trust_remote_code=True (--trust-remote-code) to allow it")
        model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=True, dtype=dtype,
                                                     device_map=device_map, **hub)
    else:
        native_config, native_model = {"qwen3": (Qwen3Config, Qwen3ForCausalLM),
                                       "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                                       "llama": (LlamaConfig, LlamaForCausalLM)}[family.native]
        fields = {key: value for key, value in config.items() if key not in _FOREIGN}
        model = native_model.from_pretrained(source, config=native_config(**fields), dtype=dtype,
                                             device_map=device_map, **hub)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
    return model, tokenizer, size


def mask_id_of(family: Family, config: dict[str, Any], tokenizer: Any) -> int | None:
    """The config's ``mask_token_id``, else the tokenizer's mask token or the family's mask string, else
    the published checkpoints' id (None where the family has none)."""
    if isinstance(config.get("mask_token_id"), int):
        return config["mask_token_id"]
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    vocabulary = tokenizer.get_vocab()
    return next((vocabulary[token] for token in family.mask_tokens if token in vocabulary), family.mask_token_id)
