"""What the block caches share: their plans hold a ``BlockKVCache``, whose rows can be cut and repeated."""

from __future__ import annotations

from typing import Any

import torch

from unmask.core.component import Component


class BlockKVRows(Component):
    """A cache manager whose plans' ``past_key_values`` is a ``BlockKVCache`` (or None)."""

    __slots__ = ()

    def rows_of(self, past_key_values: Any, index: torch.Tensor) -> Any:
        return past_key_values.select_rows(index)

    def repeated(self, past_key_values: Any, times: int) -> Any:
        return past_key_values.repeated(times)
