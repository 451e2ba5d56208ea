"""Fast-dLLM's block KV caches (Wu et al. 2025, arXiv 2505.22618) on transformers' Cache API.

At a block's first step (and every ``refresh_every`` steps) the whole canvas runs and its keys/values
are kept; later steps of the block run only part of the canvas against them:

- ``prefix``: keep the positions left of the block, run ``[block_start:]``;
- ``dual``: keep everything, run only the block, overwriting the block's keys/values in place.

The kept context is stale until the next refresh: both are approximations, exact with ``refresh_every=1``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from attrs import define, field

from unmask.caches._rows import BlockKVRows
from unmask.core.model_info import ModelInfo
from unmask.core.types import CanvasState, ForwardPlan
from unmask.core.validators import integer, one_of, optional

__all__ = ["PrefixCache", "DualCache"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@define
class _BlockCacheManager(BlockKVRows):
    # String parameters a request to `unmask serve` may set: data, never a path (docs/serve.md).
    request_strings: ClassVar[dict[str, str]] = {"dtype": "text"}

    refresh_every: int = field(default=0, validator=integer(minimum=0))  # 0: only at block starts
    dtype: str | None = field(default=None, validator=optional(one_of(*_DTYPES)))
    _cache: Any = field(default=None, init=False, repr=False, eq=False)
    _stored_width: int = field(default=0, init=False, repr=False, eq=False)
    _block_start: int = field(default=-1, init=False, repr=False, eq=False)

    def reset(self, model: Any = None) -> None:
        info = None if model is None else ModelInfo.of(model)
        if info is not None and not info.accepts_cache:
            raise ValueError(
                f"cache {type(self).__name__} needs a model that takes a KV cache (past_key_values or cache); "
                f"{type(model).__name__} does not (use cache='none')"
            )
        if info is not None and info.block_size is not None:
            raise ValueError(f"cache {type(self).__name__} approximates a bidirectional model's context; this model "
                             "attends block-causally, so finished blocks have an exact cache: use cache='exact'")
        self._cache, self._stored_width, self._block_start = None, 0, -1

    def plan(self, state: CanvasState) -> ForwardPlan:
        # Refreshes depend only on the block and the step, never on other rows (EoTP cuts shrink the
        # canvas), so that a row decodes the same in any batch.
        width = state.input_ids.shape[1]
        due = self.refresh_every and state.step % self.refresh_every == 0
        if self._cache is None or state.block_start != self._block_start or due:
            from unmask.caches.kv import BlockKVCache  # transformers loads only when a cache is used

            self._cache = BlockKVCache(_DTYPES[self.dtype] if self.dtype else None)
            self._stored_width, self._block_start = width, state.block_start
            return ForwardPlan(start=0, end=width, attention_mask=state.attention_mask, past_key_values=self._cache,
                               fills_cache=True)
        return self._partial_plan(state, state.block_start - state.lookbehind, width)

    def _partial_plan(self, state: CanvasState, start: int, width: int) -> ForwardPlan:
        raise NotImplementedError


@define
class PrefixCache(_BlockCacheManager):
    """Reuse the keys/values left of the block; later steps of a block run ``[block_start:]``.

    Fast-dLLM's prefix cache (arXiv 2505.22618). ``refresh_every=n`` also refreshes every n steps in a
    block (1 = exact); ``dtype`` stores the cache in another precision.
    """

    def _partial_plan(self, state: CanvasState, start: int, width: int) -> ForwardPlan:
        if self._cache.mode == "store":  # first partial step after a refresh: drop the block and after
            self._cache.keep_first(start)
        self._cache.set_mode("extend")
        return ForwardPlan(start=start, end=width, attention_mask=state.attention_mask, past_key_values=self._cache)


@define
class DualCache(_BlockCacheManager):
    """Reuse the keys/values left and right of the block; later steps run only the block's tokens and
    overwrite its keys/values in place.

    Fast-dLLM's dual cache (arXiv 2505.22618). ``refresh_every=n`` also refreshes every n steps in a
    block (1 = exact); ``dtype`` stores the cache in another precision.
    """

    def _partial_plan(self, state: CanvasState, start: int, width: int) -> ForwardPlan:
        self._cache.set_mode("overwrite", start)
        # Columns cut since the refresh stay in the cache, hidden by the mask.
        hidden = self._stored_width - width
        attention_mask = torch.nn.functional.pad(state.attention_mask, (0, hidden))
        end = min(state.block_end, width)
        return ForwardPlan(start=start, end=end, attention_mask=attention_mask, past_key_values=self._cache)
