"""What the engine needs to know of a model, read once per decode: its token ids, vocabulary, positions and
attention layout. A model states these as attributes (``mask_token_id``, ``eos_token_id``, ``vocab_size``,
and where they apply ``shift_logits``, ``block_size``, ``max_positions``, ``accepts_cache``,
``accepts_pair_mask``, ``num_layers``, ``runs_layers``); this is the
one place that reads them, so the loop and its stages ask :class:`ModelInfo` and never the model."""

from __future__ import annotations

from typing import Any

from attrs import frozen

from unmask.core.types import DecodeConfig

__all__ = ["ModelInfo"]


@frozen(kw_only=True)
class ModelInfo:
    mask_token_id: int
    eos_token_id: int
    vocab_size: int | None  # None: the model does not say (ids are then not range-checked)
    shift_logits: bool  # the logits at column i predict position i + 1 (Dream)
    block_size: int | None  # a block-causal model's block (SDAR, Fast-dLLM v2, LLaDA 2.0); None: bidirectional
    max_positions: int | None  # the longest canvas it reads
    accepts_cache: bool  # it takes a KV cache (past_key_values)
    # it takes a (B, 1, Q, K) additive attention mask (0: may attend, -inf: may not) in place of (B, K)
    accepts_pair_mask: bool = False
    num_layers: int | None = None  # its layers, where it says (forward costs are counted in position-layers)
    # it runs a layer at a time through ``model.layer_stack()`` (unmask.contrib.models.layers.LayerStack), for a
    # cache that decides per layer what to recompute
    runs_layers: bool = False

    @property
    def own_cache(self) -> str:
        """The cache it decodes with by default: the exact cache of finished blocks where attention is
        block-causal and it takes a KV cache, else none."""
        return "exact" if self.block_size and self.accepts_cache else "none"

    @classmethod
    def of(cls, model: Any, config: DecodeConfig | None = None) -> ModelInfo:
        """The model's facts, checked; ``config``'s token ids win over the model's, and its block length must
        suit a block-causal model."""
        vocab = getattr(model, "vocab_size", None)
        vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
        mask_id = _token_id(config.mask_token_id if config else None, model, "mask_token_id", vocab)
        eos_id = _token_id(config.eos_token_id if config else None, model, "eos_token_id", vocab)
        if mask_id == eos_id:
            raise ValueError(f"mask_token_id and eos_token_id are both {mask_id}; the canvas needs them apart")
        size = getattr(model, "block_size", None)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"the model's block_size must be a positive integer or None, got {size!r}")
        if size is not None and config is not None and size % config.num_block_tokens:
            raise ValueError(f"block_length={config.block_length}: the model attends block-causally over blocks of "
                             f"{size} positions; decode with block_length={size} or a divisor of it (sub-blocks, "
                             "decoded left to right, as Fast-dLLM v2 does)")
        positions = getattr(model, "max_positions", None)
        layers = getattr(model, "num_layers", None)
        return cls(mask_token_id=mask_id, eos_token_id=eos_id, vocab_size=vocab,
                   shift_logits=bool(getattr(model, "shift_logits", False)), block_size=size,
                   max_positions=positions if isinstance(positions, int) else None,
                   accepts_cache=bool(getattr(model, "accepts_cache", False)),
                   accepts_pair_mask=bool(getattr(model, "accepts_pair_mask", False)),
                   num_layers=layers if isinstance(layers, int) and not isinstance(layers, bool) else None,
                   runs_layers=bool(getattr(model, "runs_layers", False)))


def _token_id(configured: int | None, model: Any, name: str, vocab: int | None) -> int:
    value = configured if configured is not None else getattr(model, name, None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} is not set: give it in the config or as the model's attribute {name}")
    if vocab is not None and value >= vocab:
        raise ValueError(f"{name}={value} is outside the model's vocabulary of {vocab}")
    return value
