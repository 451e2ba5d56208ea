"""A transformers decoder model run a layer at a time: the ability a cache that recomputes per layer reads
(``TransformersDenoiser.layer_stack``; Elastic-Cache, :mod:`unmask.caches.elastic`).

It speaks of what every decoder layer of transformers' Llama kind has (Llama and the LLaDA checkpoints
converted to it, Qwen2 and Dream, Qwen3, Mistral): an embedding, rotary position embeddings, pre-norm
attention (q/k/v/o projections, per-head q/k norms where Qwen3 has them) and MLP with residuals, a final
norm and an output head. :meth:`LayerStack.full` is the model's own forward (its values exactly); the
layer-wise path computes the same layers (with an additive mask, so to rounding), and the attention weights of
the queries asked for.
"""

from __future__ import annotations

from typing import Any

import torch
from attrs import define, field

__all__ = ["LayerStack", "additive_mask"]


def additive_mask(keys: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K): 0 where a key is real (``keys`` (B, K) nonzero), the dtype's lowest value elsewhere."""
    blocked = ~keys.bool()[:, None, None, :].expand(-1, 1, queries, -1)
    return torch.zeros(blocked.shape, dtype=dtype, device=keys.device).masked_fill(blocked, torch.finfo(dtype).min)


@define
class LayerStack:
    """``model`` (a transformers ``...ForCausalLM`` of the Llama kind, bidirectional) a layer at a time: the
    :class:`unmask.core.types.LayerStack` protocol."""

    model: Any
    layers: Any = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.layers = self.model.model.layers[: self.model.config.num_hidden_layers]

    @property
    def count(self) -> int:
        return len(self.layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def full(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
             ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The model's own forward over the whole canvas: (B, L, V) logits (unshifted), and per layer its
        input hidden states (B, L, H), keys and values (B, kv_heads, L, head_dim)."""
        from transformers import DynamicCache

        inputs: list[torch.Tensor] = []
        kept = DynamicCache()
        hooks = [layer.register_forward_pre_hook(lambda _, args, kwargs: inputs.append(args[0] if args else
                                                                                       kwargs["hidden_states"]),
                                                  with_kwargs=True) for layer in self.layers]
        try:
            logits = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                past_key_values=kept, use_cache=True).logits
        finally:
            for hook in hooks:
                hook.remove()
        return logits, inputs, [layer.keys for layer in kept.layers], [layer.values for layer in kept.layers]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.model.rotary_emb(hidden, position_ids=position_ids)

    def mask(self, keys: torch.Tensor, queries: int) -> torch.Tensor:
        """(B, 1, Q, K) additive attention mask: every query sees the real keys (``keys`` (B, K) nonzero)."""
        return additive_mask(keys, queries, self.dtype)

    def project(self, index: int, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer ``index``'s queries (B, heads, Q, d), keys and values (B, kv_heads, Q, d) of the fed columns
        ``hidden`` (B, Q, H), position-embedded."""
        layer = self.layers[index]
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        keys = attention.k_proj(normed).view(*hidden.shape[:-1], -1, attention.head_dim)
        if getattr(attention, "k_norm", None) is not None:  # Qwen3 normalises keys per head
            keys = attention.k_norm(keys)
        values = attention.v_proj(normed).view(*hidden.shape[:-1], -1, attention.head_dim).transpose(1, 2)
        return self._queries(index, normed, rotary), _rotate(keys.transpose(1, 2), rotary), values

    def attend(self, index: int, hidden: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor, watched: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rest of layer ``index`` for the fed columns ``hidden`` with their ``queries``, attending over
        ``keys``/``values`` (B, kv_heads, K, d) under ``mask``: its output and the (B, heads, W, K) attention
        weights of the queries at slots ``watched`` (B, W), if asked. The decoder layer of transformers' Llama
        kind, step for step."""
        layer = self.layers[index]
        attention = layer.self_attn
        heads = queries.shape[1]
        mixed = torch.nn.functional.scaled_dot_product_attention(
            queries, _grouped(keys.to(queries.dtype), heads), _grouped(values.to(queries.dtype), heads), attn_mask=mask,
            scale=attention.scaling)
        hidden = hidden + attention.o_proj(mixed.transpose(1, 2).reshape(*hidden.shape[:-1], -1))
        output = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        if watched is None:
            return output, None
        picked = queries.gather(2, watched[:, None, :, None].expand(-1, heads, -1, queries.shape[-1]))
        return output, self._weights(index, picked, keys, mask[:, :, :1])

    def layer(self, index: int, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
              watched: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Layer ``index`` over every column ``hidden`` (B, L, H): its output, keys, values and the attention
        weights of the columns ``watched``, if asked."""
        queries, keys, values = self.project(index, hidden, rotary)
        output, weights = self.attend(index, hidden, queries, keys, values, mask, watched)
        return output, keys, values, weights

    def attention(self, index: int, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                  keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, heads, Q, K) attention weights of layer ``index`` for queries from its input ``hidden`` (B, Q, H)
        over ``keys`` (B, kv_heads, K, head_dim), as eager attention computes them."""
        queries = self._queries(index, self.layers[index].input_layernorm(hidden), rotary)
        return self._weights(index, queries, keys, mask)

    def _queries(self, index: int, normed: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        attention = self.layers[index].self_attn
        queries = attention.q_proj(normed).view(*normed.shape[:-1], -1, attention.head_dim)
        if getattr(attention, "q_norm", None) is not None:  # Qwen3 normalises queries per head
            queries = attention.q_norm(queries)
        return _rotate(queries.transpose(1, 2), rotary)

    def _weights(self, index: int, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = queries @ _grouped(keys.to(queries.dtype), queries.shape[1]).transpose(-1, -2)
        return torch.softmax(scores * self.layers[index].self_attn.scaling + mask, dim=-1, dtype=torch.float32)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, Q, V) logits of the last layer's output ``hidden`` (unshifted)."""
        return self.model.lm_head(self.model.model.norm(hidden))


def _rotate(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position embedding of (B, heads, Q, head_dim) ``x``, from (B, Q, head_dim) cos and sin."""
    cos, sin = rotary
    half = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin[:, None]


def _grouped(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, kv_heads, K, d) keys or values repeated to ``heads`` (grouped-query attention)."""
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)
