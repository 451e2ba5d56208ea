"""The exact KV cache of a block-causal model (SDAR, Fast-dLLM v2, LLaDA 2.0).

A position of a block-causal model attends to its own block and earlier ones only, so the keys and values
of a finished block never change: once stored they are exact. Each step runs the current block alone
against the stored blocks; when a block is finished, one forward on it (``finish_block``, counted in the
forwards) stores its keys and values, as SDAR's ``store_kv`` and Fast-dLLM v2's ``update_past_key_values``
do. Complete prompt blocks are stored by the first forward of a decode, which runs them anyway.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field

from unmask.caches._rows import BlockKVRows
from unmask.core.model_info import ModelInfo
from unmask.core.types import CanvasState, ForwardPlan

__all__ = ["ExactBlockCache"]


@define
class ExactBlockCache(BlockKVRows):
    """Store each finished block's keys/values with one forward on it, and run later steps on the current
    block alone against them: exact, since a block-causal model's finished blocks never see later tokens.

    SDAR's ``store_kv`` (arXiv 2510.06303) and Fast-dLLM v2's ``update_past_key_values`` (arXiv 2509.26328).
    """

    _cache: Any = field(default=None, init=False, repr=False, eq=False)
    _stored: int = field(default=0, init=False, repr=False, eq=False)  # columns [0, stored) are in the cache
    _block_size: int = field(default=0, init=False, repr=False, eq=False)

    def reset(self, model: Any = None) -> None:
        if model is not None:
            info = ModelInfo.of(model)
            size = info.block_size
            if size is None:
                raise ValueError("cache exact needs a block-causal model (one with a block_size); a bidirectional "
                                 "model's context changes with every commit: use cache='prefix' or 'dual'")
            if not info.accepts_cache:
                raise ValueError(f"cache exact needs a model that takes a KV cache; {type(model).__name__} does not "
                                 "(use cache='none')")
            self._block_size = size
        self._cache, self._stored = None, 0

    def _kv(self) -> Any:
        """The cache, made at the first forward after a reset (a decode's start, or rows joining it)."""
        from unmask.caches.kv import BlockKVCache  # transformers loads only when a cache is used

        if self._cache is None:
            self._cache = BlockKVCache()
        return self._cache

    def plan(self, state: CanvasState) -> ForwardPlan:
        self._kv()
        # The columns of the block's own model block onward run (columns agree with positions modulo the
        # block size); with shifted logits the column before it too, for the block's first prediction.
        first = max(0, (state.block_start // self._block_size) * self._block_size - state.lookbehind)
        start = max(0, min(self._stored, first, state.input_ids.shape[1] - 1))  # (EoTP may cut stored columns)
        if start < self._stored:
            self._cache.keep_first(start)
        keep = max(0, min(first, state.input_ids.shape[1]) - start)  # complete blocks it runs anyway: kept
        self._cache.set_mode("extend", keep=keep)
        self._stored = start + keep
        return ForwardPlan(start=start, end=state.input_ids.shape[1], attention_mask=state.attention_mask,
                           past_key_values=self._cache, fills_cache=keep > 0)

    def finish_block(self, state: CanvasState) -> ForwardPlan | None:
        """The forward on the model block that ``state.block_start:block_end`` finished, storing its
        keys/values; it runs all of ``state``'s columns (a shifted model's next first token is predicted
        from the last). None where EoTP cut every row before the block: nothing to store."""
        width = state.input_ids.shape[1]
        end = min(-(-state.block_end // self._block_size) * self._block_size, width)
        start = min(self._stored, end)
        if start == end:
            return None
        if start < self._stored:
            self._cache.keep_first(start)
        self._kv().set_mode("extend", keep=end - start)
        self._stored = end
        return ForwardPlan(start=start, end=width, attention_mask=state.attention_mask, past_key_values=self._cache,
                           fills_cache=True)
