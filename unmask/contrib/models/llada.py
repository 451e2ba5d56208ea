"""Convert LLaDA's original checkpoint layout to transformers' Llama layout (bidirectional attention).

LLaDA (ML-GSAI/LLaDA, ``modeling_llada.py``) is a Llama-style transformer without the causal mask:
RMSNorm, rotary embeddings with the half-split rotation, SwiGLU where ``ff_proj`` is the gated branch
(``act(ff_proj(x)) * up_proj(x)``) and ``ff_out`` projects down. Its weights therefore map one to one
onto ``LlamaForCausalLM`` with ``is_causal=False``, so real LLaDA-8B loads without remote code.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from unmask._files import check_output_directory, read_json, staged_directory

__all__ = ["LAYER_KEYS", "TOP_KEYS", "convert_llada_key", "convert_llada_state_dict", "llama_config_from_llada",
           "convert_llada_checkpoint", "unmapped_llada_options"]

# LLaDA block module -> Llama decoder-layer module.
LAYER_KEYS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
}
# LLaDA top-level module -> Llama module.
TOP_KEYS = {"wte": "model.embed_tokens", "ln_f": "model.norm", "ff_out": "lm_head"}

_BLOCK = re.compile(r"^(?:model\.)?transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)$")
_TOP = re.compile(r"^(?:model\.)?transformer\.(\w+)\.(weight|bias)$")


def convert_llada_key(key: str) -> str:
    """``model.transformer.blocks.3.ff_proj.weight`` -> ``model.layers.3.mlp.gate_proj.weight``."""
    if match := _BLOCK.match(key):
        layer, module, kind = match.groups()
        if module in LAYER_KEYS:
            return f"model.layers.{layer}.{LAYER_KEYS[module]}.{kind}"
    elif match := _TOP.match(key):
        module, kind = match.groups()
        if module in TOP_KEYS:
            return f"{TOP_KEYS[module]}.{kind}"
    raise KeyError(f"unexpected key in a LLaDA checkpoint: {key!r}")


def convert_llada_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {convert_llada_key(key): value for key, value in state.items()}


def unmapped_llada_options(llada: Mapping[str, Any]) -> list[str]:
    """The options of a LLaDA config that a Llama model cannot reproduce (its logits would differ)."""
    unmapped = [f"{key}={llada[key]!r}" for key in ("scale_logits", "input_emb_norm", "include_bias",
                                                     "include_qkv_bias", "multi_query_attention",
                                                     "attention_layer_norm") if llada.get(key)]
    if llada.get("layer_norm_type", "rms") != "rms":
        unmapped.append(f"layer_norm_type={llada['layer_norm_type']!r} (only 'rms')")
    if (llada.get("block_group_size") or 1) > 1:
        unmapped.append(f"block_group_size={llada['block_group_size']!r} (only 1)")
    if llada.get("block_type", "llama") != "llama":
        unmapped.append(f"block_type={llada['block_type']!r} (only 'llama': separate q/k/v and gated MLP)")
    return unmapped


def llama_config_from_llada(llada: Mapping[str, Any]) -> Any:
    """A ``LlamaConfig`` (``is_causal=False``) from LLaDA's ``config.json`` fields; refuses options it cannot map."""
    from transformers import LlamaConfig

    unmapped = unmapped_llada_options(llada)
    if unmapped:
        raise ValueError(f"this LLaDA config has options a Llama model cannot reproduce: {', '.join(unmapped)}; "
                         "converting would change the logits")

    vocab = llada.get("embedding_size") or llada["vocab_size"]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=llada["d_model"],
        intermediate_size=llada["mlp_hidden_size"],
        num_hidden_layers=llada["n_layers"],
        num_attention_heads=llada["n_heads"],
        num_key_value_heads=llada.get("n_kv_heads") or llada["n_heads"],
        max_position_embeddings=llada.get("max_sequence_length", 4096),
        rms_norm_eps=llada.get("rms_norm_eps", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": llada.get("rope_theta", 10000.0)},
        attention_bias=False,
        tie_word_embeddings=bool(llada.get("weight_tying", False)),
        is_causal=False,
        mask_token_id=llada.get("mask_token_id", 126336),  # LLaDA-8B's ids where the config omits them
        eos_token_id=llada.get("eos_token_id", 126081),
        pad_token_id=llada.get("pad_token_id", llada.get("eos_token_id", 126081)),
        architectures=["LlamaForCausalLM"],
    )


def convert_llada_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Rewrite a LLaDA checkpoint directory (safetensors shards) as a Llama one, shard by shard.

    Tokenizer and generation files are copied; LLaDA's own code is not. The target appears complete or not
    at all (written in a temporary directory beside it, then renamed).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise FileNotFoundError(f"source {source}: no such directory")
    check_output_directory(target, command="convert-llada", inputs=[source], argument="target")
    _refuse_links_outside(source)
    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no .safetensors files in {source}")
    config_path = source / "config.json"
    llada = read_json(config_path, what="LLaDA's config")
    if not isinstance(llada, dict):
        raise ValueError(f"{config_path}: must hold a JSON object")
    try:
        llama_config = llama_config_from_llada(llada)  # before any shard
    except KeyError as error:
        raise ValueError(f"{config_path}: missing field {error} of a LLaDA config") from None
    with staged_directory(target, command="convert-llada", inputs=[source]) as staging:
        weight_map: dict[str, str] = {}
        for shard in shards:
            try:
                with safe_open(shard, framework="pt") as reader:
                    tensors = {convert_llada_key(key): reader.get_tensor(key) for key in reader.keys()}
            except (SafetensorError, OSError) as error:
                raise ValueError(f"{shard}: not a readable safetensors file: {error}") from None
            save_file(tensors, staging / shard.name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard.name))
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        llama_config.save_pretrained(staging)
        for extra in source.iterdir():
            if extra.is_file() and extra.suffix not in (".safetensors", ".py", ".bin") and extra.name not in (
                "config.json", "model.safetensors.index.json"
            ):
                shutil.copy2(extra, staging / extra.name)
        _strip_remote_code(staging / "tokenizer_config.json")
    return target


def _refuse_links_outside(source: Path) -> None:
    """A symlink in the source that leads out of it would copy a file the user never meant to convert."""
    root = source.resolve()
    for entry in source.iterdir():
        if entry.is_symlink() and root not in entry.resolve().parents:
            raise ValueError(f"source {source}: {entry.name} is a symlink to {entry.resolve()}, outside the source "
                             "directory; copy the checkpoint's files into a directory of their own")


def _strip_remote_code(tokenizer_config: Path) -> None:
    if tokenizer_config.exists():
        settings = read_json(tokenizer_config, what="the tokenizer's config")
        if isinstance(settings, dict) and settings.pop("auto_map", None) is not None:
            tokenizer_config.write_text(json.dumps(settings, indent=2))
