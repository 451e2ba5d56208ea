"""Elastic-Cache (Nguyen-Tri et al. 2025, "Attention Is All You Need for KV Cache in Diffusion LLMs", arXiv
2510.14973): keep every layer's input hidden states, keys and values; run each step only the positions that
changed or matter; recompute everything from the layer where the attention of the most-attended tokens drifts.

Per step, for each row (docs/caches.md):

- the query set is the block being decoded, the positions whose token changed since the cache last saw them
  and the tracked tokens (and the prompt, with ``fresh_prompt``); only it runs, against the kept keys and
  values of the other positions;
- at each layer, before the layer runs, the tracked tokens' attention (their fresh queries over the keys with
  the query set's written in) is compared with their attention at the previous step (from what the cache held):
  cosine similarity averaged over heads and tokens; below ``gamma``, this layer and every later one run all
  positions, from the kept inputs (fresh for the query set);
- after the step, per layer, the ``track_num`` positions that the ``window_length`` leftmost masks of the block
  attend to most (masks excluded) are tracked for the next step.

The layer whose test fails is recomputed too (the paper starts from the next one, whose inputs that layer's
outputs are), so ``gamma`` above 1 is the uncached forward exactly, and below -1 never refreshes after the
first forward. A row's cost is counted in position-layers (``DecodeResult.recomputed``).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from attrs import define, field

from unmask.core.component import Component
from unmask.core.model_info import ModelInfo
from unmask.core.types import CanvasState, ForwardPlan
from unmask.core.validators import integer, number

__all__ = ["ElasticCache"]


@define
class _Kept:
    """What the cache holds for every row: the canvas it last saw, per layer the inputs, keys and values, and
    the tracked tokens."""

    ids: torch.Tensor  # (B, L)
    positions: torch.Tensor  # (B, L)
    hidden: list[torch.Tensor]  # per layer (B, L, H): the layer's input
    keys: list[torch.Tensor]  # per layer (B, kv_heads, L, head_dim)
    values: list[torch.Tensor]
    tracked: torch.Tensor  # (B, T) columns


@define
class ElasticCache(Component):
    """Recompute per layer where attention drifts: run the block, the changed positions and the most-attended
    tokens against kept keys and values; where a tracked token's attention moved since the previous step
    (cosine similarity below ``gamma``), recompute that layer and the later ones for every position.

    Elastic-Cache (arXiv 2510.14973): ``gamma`` 0.9 and ``track_num`` 1 as the paper's; above 1 every layer
    is recomputed at every step (exact), below -1 nothing after the first forward. The window is the block.
    """

    gamma: float = field(default=0.9, validator=number(minimum=-1e9))
    track_num: int = field(default=1, validator=integer(minimum=0, maximum=64))
    # The leftmost masked positions of the block (the paper's sliding window) whose attention picks the tracked
    # tokens; the block itself is what each step predicts.
    window_length: int = field(default=16, validator=integer(minimum=1, maximum=4096))
    # Run the prompt at every step too, so that its keys and values never go stale (not in the paper: for
    # models whose prompt representations follow the answer, as the bundled one's do; docs/caches.md).
    fresh_prompt: bool = field(default=False, validator=attrs.validators.instance_of(bool))
    _stack: Any = field(default=None, init=False, repr=False, eq=False)
    _mask_id: int = field(default=-1, init=False, repr=False, eq=False)
    _shift: bool = field(default=False, init=False, repr=False, eq=False)
    _kept: _Kept | None = field(default=None, init=False, repr=False, eq=False)

    def reset(self, model: Any = None) -> None:
        self._kept = None
        if model is None:
            return
        info = ModelInfo.of(model)
        if not info.runs_layers or info.block_size is not None:
            raise ValueError(f"cache elastic recomputes per layer, so it needs a bidirectional model that runs a "
                             f"layer at a time (runs_layers); {type(model).__name__} does not (use cache='dual')")
        self._stack, self._mask_id, self._shift = model.layer_stack(), info.mask_token_id, info.shift_logits

    def plan(self, state: CanvasState) -> ForwardPlan:
        start, end = state.block_start - state.lookbehind, min(state.block_end, state.input_ids.shape[1])
        return ForwardPlan(start=start, end=end, attention_mask=state.attention_mask, fills_cache=True,
                           run=lambda rows: self._run(state, start, end, rows))

    def _run(self, state: CanvasState, start: int, end: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, ids, positions, keys = self._kept, state.input_ids, state.position_ids, state.attention_mask
        if self.gamma <= 1 and (kept is None or kept.ids.shape[0] != ids.shape[0] or kept.ids.shape[1] < ids.shape[1]):
            return self._refresh_all(ids, positions, keys, start, end)
        selected = rows.nonzero().flatten()
        if self.gamma > 1:  # every layer of every step recomputed: the model's own forward, for the rows asked
            full = self._stack.full(ids[selected], positions[selected], keys[selected])[0]
            logits = self._shifted(full)[:, start:end]
            recomputed = torch.full_like(selected, ids.shape[1] * self._stack.count)
        else:
            assert kept is not None
            if ids.shape[1] < kept.ids.shape[1]:  # columns cut since (EoTP): kept, hidden from every query
                width = ids.shape[1]
                ids = torch.cat([ids, kept.ids[:, width:]], 1)
                positions = torch.cat([positions, kept.positions[:, width:]], 1)
                keys = torch.nn.functional.pad(keys, (0, kept.ids.shape[1] - width))
            logits, recomputed = self._step(selected, ids[selected], positions[selected], keys[selected], start, end,
                                            state.gen_start if self.fresh_prompt else 0)
        # Rows not asked for get zeros and count nothing.
        return (logits.new_zeros((len(rows), *logits.shape[1:])).index_copy(0, selected, logits),
                torch.zeros(len(rows), dtype=torch.long, device=rows.device).index_copy(0, selected, recomputed))

    def _refresh_all(self, ids: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, start: int, end: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own forward over every row, kept whole, and the tokens its window attends to most."""
        stack = self._stack
        logits, hidden, layer_keys, layer_values = stack.full(ids, positions, keys)
        logits = self._shifted(logits)
        counts = torch.full((len(ids),), ids.shape[1] * stack.count, device=ids.device)
        slots, valid = self._watched_masks(ids, start, end)
        window = start + slots
        rotary, mask = stack.rotary(hidden[0], positions.gather(1, window)), stack.mask(keys, window.shape[1])
        attended = [_attended(stack.attention(layer, _at(hidden[layer], window), rotary, layer_keys[layer], mask), valid)
                    for layer in range(stack.count)]
        self._kept = _Kept(ids=ids.clone(), positions=positions.clone(), hidden=hidden, keys=layer_keys,
                           values=layer_values, tracked=self._most_attended(attended, ids, keys))
        return logits[:, start:end], counts

    def _step(self, selected: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
              start: int, end: int, prompt_end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of rows ``selected`` (their canvases given; columns before ``prompt_end`` run too): the
        window's logits and the position-layers each computed. A layer's attention weights give the tracked
        tokens' rows for the drift test and the window's for the next step's tracking."""
        stack, kept, width = self._stack, self._kept, end - start
        assert kept is not None
        tracked = kept.tracked[selected]
        running = ids != kept.ids[selected]  # besides the window and the tracked tokens
        running[:, :prompt_end] |= keys[:, :prompt_end].bool()
        query = _query_columns(running, tracked, start, end)
        slots = (query[:, None, :] == tracked[:, :, None]).long().argmax(-1)  # where each tracked token runs
        watched, valid = self._watched_masks(ids, start, end)  # (the window's slots are its columns - start)
        hidden = stack.embed(ids.gather(1, query))  # (b, Q, H): the query columns' hidden states
        rotary_query = stack.rotary(hidden, positions.gather(1, query))
        rotary_tracked = stack.rotary(hidden, positions.gather(1, tracked))
        mask_query = stack.mask(keys, query.shape[1])
        mask_tracked = stack.mask(keys, tracked.shape[1])
        recomputed, distinct = torch.zeros_like(selected), _distinct(query)
        whole = None  # (b, L, H): every column's hidden states, for the rows refreshing
        refreshing = torch.zeros(len(selected), dtype=torch.bool, device=ids.device)
        attended = []  # per layer (b, L): attention the window's queries pay to each column
        for layer in range(stack.count):
            attention = hidden.new_zeros((len(ids), ids.shape[1]), dtype=torch.float32)
            reusing = (~refreshing).nonzero().flatten()
            if len(reusing):
                rows, inputs, columns = selected[reusing], hidden[reusing], query[reusing]
                every = len(rows) == len(kept.ids)  # (then the kept tensors are written in place, not copied)
                kept_hidden, kept_keys = _take(kept.hidden[layer], rows, every), _take(kept.keys[layer], rows, every)
                # The tracked tokens' attention at the previous step, from what the cache holds before this one,
                testing = tracked.shape[1] > 0 and self.gamma > -1  # (a cosine similarity is never below -1)
                before = None if not testing else stack.attention(
                    layer, _at(kept_hidden, tracked[reusing]), _rows(rotary_tracked, reusing), kept_keys,
                    mask_tracked[reusing])
                # and now, with the fresh keys of the query columns written in: the test before the layer runs.
                queries, fresh_keys, fresh_values = stack.project(layer, inputs, _rows(rotary_query, reusing))
                kept_values = _take(kept.values[layer], rows, every)
                kept_keys.scatter_(2, _heads(columns, fresh_keys), fresh_keys)
                kept_values.scatter_(2, _heads(columns, fresh_values), fresh_values)
                kept_hidden[torch.arange(len(rows), device=ids.device)[:, None], columns] = inputs
                if not every:
                    kept.hidden[layer][rows], kept.keys[layer][rows], kept.values[layer][rows] = (
                        kept_hidden, kept_keys, kept_values)
                drift = torch.zeros_like(reusing, dtype=torch.bool)  # (nothing tracked: nothing drifts)
                if before is not None:
                    now = stack.attention(layer, _at(inputs, slots[reusing]), _rows(rotary_tracked, reusing),
                                          kept_keys, mask_tracked[reusing])
                    drift = _similarity(now, before) < self.gamma
                if drift.any():  # this layer on: every column, from the kept inputs (fresh where the query ran)
                    moving = reusing[drift]
                    whole = kept.hidden[layer][selected].clone() if whole is None else whole
                    whole[moving] = kept.hidden[layer][selected[moving]]
                    refreshing[moving] = True
                stay, kept_rows = reusing[~drift], ~drift
                if len(stay):
                    pick = (lambda t: t) if bool(kept_rows.all()) else (lambda t: t[kept_rows])
                    output, weights = stack.attend(layer, pick(inputs), pick(queries), pick(kept_keys),
                                                   pick(kept_values), mask_query[stay], watched[stay])
                    attention[stay] = _attended(weights, valid[stay])
                    hidden[stay] = output
                    recomputed[stay] += distinct[stay]
            updating = refreshing.nonzero().flatten()
            if len(updating):
                assert whole is not None
                rows, inputs = selected[updating], whole[updating]
                # (every column's rotary embedding and mask only for a step that refreshes)
                output, layer_keys, layer_values, weights = stack.layer(
                    layer, inputs, stack.rotary(inputs, positions[updating]), stack.mask(keys[updating], ids.shape[1]),
                    start + watched[updating])
                kept.hidden[layer][rows], kept.keys[layer][rows], kept.values[layer][rows] = inputs, layer_keys, layer_values
                attention[updating] = _attended(weights, valid[updating])
                whole[updating] = output
                hidden[updating] = _at(output, query[updating])
                recomputed[updating] += ids.shape[1]
            attended.append(attention)
        kept.ids[selected], kept.positions[selected] = ids, positions
        kept.tracked[selected] = self._most_attended(attended, ids, keys)
        return self._shifted(stack.logits(hidden[:, :width])), recomputed

    def _shifted(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits whose column i predicts position i, as the model adapter gives them: a model that predicts
        i + 1 at i (Dream) has its logits moved right by one (the first column, left of the window, is unread)."""
        return torch.cat([logits[:, :1], logits[:, :-1]], 1) if self._shift else logits

    def _watched_masks(self, ids: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, W) the leftmost ``window_length`` masked positions of the window, as offsets from ``start``, and
        which of them are masks (a row with fewer repeats its first offsets)."""
        masked = ids[:, start:end] == self._mask_id
        order = torch.argsort((~masked).long(), dim=1, stable=True)[:, :self.window_length]
        return order, masked.gather(1, order)

    def _most_attended(self, attended: list[torch.Tensor], ids: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(b, T) columns to track: per layer, the ``track_num`` that the window's queries attend to most
        (``attended`` (b, L) per layer; masks and hidden columns excluded)."""
        eligible = keys.bool() & (ids != self._mask_id)
        return torch.cat([attention.masked_fill(~eligible, -1.0).topk(min(self.track_num, ids.shape[1])).indices
                          for attention in attended], 1)


def _query_columns(running: torch.Tensor, tracked: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """(b, Q) columns each row runs: the window ``[start, end)`` first, then its other ``running`` (b, L) and
    tracked columns outside it; rows with fewer repeat the window's first column (the same computation twice)."""
    outside = running.clone()
    outside.scatter_(1, tracked, True)
    outside[:, start:end] = False
    extra = int(outside.sum(1).max())
    window = torch.arange(start, end, device=running.device)[None, :].expand(len(running), -1)
    order = torch.argsort((~outside).long(), dim=1, stable=True)[:, :extra]
    order = torch.where(outside.gather(1, order), order, start)
    return torch.cat([window, order], 1)


def _distinct(query: torch.Tensor) -> torch.Tensor:
    """(b,) distinct columns in each row of ``query``."""
    ordered = query.sort(1).values
    return 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(1)


def _expand(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return index[..., None].expand(-1, -1, like.shape[-1])


def _attended(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(b, L) attention paid to each column by the ``valid`` (b, W) of the watched queries' ``weights`` (b,
    heads, W, L), summed over heads."""
    return (weights * valid[:, None, :, None]).sum((1, 2))


def _heads(columns: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(b, Q) columns as an index into (b, heads, L, d) along the columns."""
    return columns[:, None, :, None].expand(-1, like.shape[1], -1, like.shape[-1])


def _take(kept: torch.Tensor, rows: torch.Tensor, every: bool) -> torch.Tensor:
    """The kept tensor's ``rows``: itself where they are every row (in order), else a copy."""
    return kept if every else kept[rows]


def _at(hidden: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(b, C, H) hidden states at ``columns`` (b, C)."""
    return hidden.gather(1, _expand(columns, hidden))


def _rows(rotary: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rotary[0][rows], rotary[1][rows]


def _similarity(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """(b,) cosine similarity of attention rows (b, heads, T, L), averaged over heads and tokens."""
    return torch.nn.functional.cosine_similarity(now, before, dim=-1).mean((1, 2))
