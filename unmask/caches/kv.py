"""A transformers ``Cache`` for block decoding: its layers store, extend or overwrite keys/values."""

from __future__ import annotations

from copy import copy as shallow_copy
from typing import Any, Callable

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["BlockKVCache"]


class _BlockLayer(DynamicLayer):
    """A layer that either records what a forward computes (``store``), or keeps what it has and returns it
    joined with the new keys/values (``extend``; the first ``keep`` new ones are kept too), or writes the
    new ones into ``[start, start + n)``."""

    mode = "store"
    start = 0
    keep = 0
    storage_dtype: torch.dtype | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if self.mode == "store":
            keys, values = super().update(key_states, value_states)
            if self.storage_dtype is not None:
                self.keys, self.values = self.keys.to(self.storage_dtype), self.values.to(self.storage_dtype)
            return keys, values
        dtype = key_states.dtype
        if self.mode == "extend":
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys = torch.cat([self.keys.to(dtype), key_states], dim=-2)
            values = torch.cat([self.values.to(dtype), value_states], dim=-2)
            if self.keep:
                kept = keys.shape[-2] - key_states.shape[-2] + self.keep
                storage = self.storage_dtype or dtype
                self.keys, self.values = keys[..., :kept, :].to(storage), values[..., :kept, :].to(storage)
            return keys, values
        end = self.start + key_states.shape[-2]
        self.keys[..., self.start:end, :] = key_states.to(self.keys.dtype)
        self.values[..., self.start:end, :] = value_states.to(self.values.dtype)
        return self.keys.to(dtype), self.values.to(dtype)

    def get_mask_sizes(self, query_length: int, *args: Any, **kwargs: Any) -> tuple[int, int]:
        stored = super().get_seq_length()
        return (stored if self.mode == "overwrite" else stored + query_length), 0

    def get_seq_length(self) -> int:
        # Overwriting forwards see no "past" before their tokens: transformers derives cache positions
        # from this, and the engine passes explicit position ids anyway.
        return 0 if self.mode == "overwrite" else super().get_seq_length()


class BlockKVCache(Cache):
    """A transformers ``Cache`` whose layers can store, extend or overwrite (see ``_BlockLayer``)."""

    def __init__(self, storage_dtype: torch.dtype | None = None) -> None:
        super().__init__(layer_class_to_replicate=_BlockLayer)
        self.storage_dtype = storage_dtype
        self.mode, self.start, self.keep = "store", 0, 0

    def set_mode(self, mode: str, start: int = 0, keep: int = 0) -> None:
        self.mode, self.start, self.keep = mode, start, keep
        for layer in self.layers:
            layer.mode, layer.start, layer.keep, layer.storage_dtype = mode, start, keep, self.storage_dtype

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        while len(self.layers) <= layer_idx:  # layers appear on first use
            layer = _BlockLayer()
            layer.mode, layer.start, layer.keep = self.mode, self.start, self.keep
            layer.storage_dtype = self.storage_dtype
            self.layers.append(layer)
        return self.layers[layer_idx].update(key_states, value_states)

    def repeated(self, times: int) -> BlockKVCache:
        """A copy whose rows are this cache's rows ``times`` over (row r of copy k is row r), in the same mode:
        candidate canvases are scored against it in one batch, and this cache is left as it was."""
        return self._copy(lambda tensor: tensor.repeat(times, 1, 1, 1))

    def select_rows(self, index: torch.Tensor) -> BlockKVCache:
        """A copy holding only rows ``index``, in the same mode, for a forward of those rows alone. What that
        forward overwrites stays in the copy: the rows' block is fed, and so overwritten, at every step."""
        return self._copy(lambda tensor: tensor[index])

    def _copy(self, rows: Callable[[torch.Tensor], torch.Tensor]) -> BlockKVCache:
        """A copy in the same mode whose keys and values are ``rows`` of this cache's (new tensors, so an
        overwrite never reaches this cache)."""
        copy = BlockKVCache(self.storage_dtype)
        copy.set_mode(self.mode, self.start, self.keep)
        for layer in self.layers:
            twin = shallow_copy(layer)  # its mode, start and transformers' own bookkeeping
            if getattr(layer, "is_initialized", False) and layer.keys.dim() == 4:  # (not the empty start)
                twin.keys, twin.values = rows(layer.keys), rows(layer.values)
            copy.layers.append(twin)
        return copy

    def keep_first(self, length: int) -> None:
        for layer in self.layers:
            layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]
