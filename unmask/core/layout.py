"""The canvas layout stage: where each row's prompt and answer lie on the canvas, and the blocks a decode walks.

A bidirectional model reads every row the same way: prompts left-padded to one width, answers from the
same column. A block-causal model counts its blocks from position 0, so a row's columns must agree with its
positions modulo the block size: each row is left-padded by a multiple of the block size, its answer starts
at its own column inside one shared first block, and its canvas ends with the block that holds its answer's
last position (later columns hold EOS, hidden from it). The blocks are then the same columns for every row,
so one batch decodes rows of any prompt lengths together.
"""

from __future__ import annotations

from typing import Sequence, overload

import attrs
import torch

from unmask.core.model_info import ModelInfo

__all__ = ["Layout", "lay_out", "joined", "widened", "pad_prompts", "block_columns", "prompt_tensors", "check_prompts",
           "whole_blocks"]


def pad_prompts(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(input_ids, attention_mask)``."""
    if not prompts:
        raise ValueError("prompts must hold at least one prompt")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            input_ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


def block_columns(gen_start: int, gen_length: int, size: int, *, aligned: bool = False) -> list[tuple[int, int]]:
    """The blocks' columns ``[start, end)``: from the first answer column on, or with ``aligned`` at multiples
    of ``size`` (block-causal models count blocks from position 0): the first block then starts before the
    answer, its first columns the prompt's end (as SDAR's loop fills the prompt's last block), and the last
    may be partial. A row's blocks then depend on its own positions only, never on the rows beside it."""
    end = gen_start + gen_length
    first = gen_start - gen_start % size if aligned else gen_start
    edges = [first, *range(first + size, end, size), end]
    return list(zip(edges[:-1], edges[1:]))


@attrs.frozen
class Layout:
    """A decode's canvas before its first step."""

    x: torch.Tensor  # (B, L): padding, prompt, masks (EOS past a row's end)
    real: torch.Tensor  # (B, L) long: 1 where the row has a token (prompt or answer), 0 on its left padding
    answer_start: torch.Tensor  # (B,) long: each row's first answer column
    row_end: torch.Tensor  # (B,) long: where each row's canvas ends (exclusive)
    blocks: list[tuple[int, int]]  # the blocks' columns, shared by every row

    @property
    def gen_start(self) -> int:
        """The first column where any row's answer starts (every column before it is prompt or padding)."""
        return int(self.answer_start.min())


def lay_out(input_ids: torch.Tensor, prompt_mask: torch.Tensor, info: ModelInfo, gen_length: int,
            block_length: int) -> Layout:
    """The canvas of left-padded prompts ``input_ids`` (their ``prompt_mask``) and ``gen_length`` masks each,
    with blocks of ``block_length`` (aligned to a block-causal model's blocks)."""
    batch, width = input_ids.shape
    size, device = info.block_size, input_ids.device
    lengths = prompt_mask.sum(1)
    if size is None or not ((width - lengths) % size).any():
        # Every row starts its answer at the same column (a block-causal model's rows: padded by whole blocks).
        end = width + gen_length if size is None else whole_blocks(width + gen_length, size)
        x = torch.cat([input_ids, input_ids.new_full((batch, end - width), info.mask_token_id)], dim=1)
        real = torch.cat([prompt_mask, prompt_mask.new_ones((batch, end - width))], dim=1)
        starts = torch.full((batch,), width, dtype=torch.long, device=device)
        return Layout(x=x, real=real, answer_start=starts, row_end=torch.full_like(starts, end),
                      blocks=block_columns(width, end - width, block_length, aligned=size is not None))
    whole = int((lengths // size).max()) * size  # the first block any answer starts in begins here
    starts = whole + lengths % size
    ends = whole + whole_blocks(lengths % size + gen_length, size)  # each answer's last block ends the row
    end = int(ends.max())
    columns = torch.arange(end, device=device)[None, :]
    pads = (starts - lengths)[:, None]
    prompt = (columns >= pads) & (columns < starts[:, None])
    x = torch.full((batch, end), info.mask_token_id, dtype=torch.long, device=device)
    x[prompt] = input_ids[prompt_mask.bool()]
    x = x.masked_fill((columns < pads) | (columns >= ends[:, None]), info.eos_token_id)
    gen_start = int(starts.min())
    return Layout(x=x, real=(columns >= pads).long(), answer_start=starts, row_end=ends,
                  blocks=block_columns(gen_start, end - gen_start, block_length, aligned=True))


def joined(layout: Layout, input_ids: torch.Tensor, prompt_mask: torch.Tensor, info: ModelInfo, gen_length: int,
           block_length: int, at: int) -> tuple[Layout, int]:
    """``layout`` with rows for more prompts (left-padded ``input_ids``, their ``prompt_mask``), each laid out
    so that its answer starts at a block boundary ``at`` or later (a block-causal model's rows at the first
    column there that agrees with their positions), and the columns prepended to every row where a prompt
    does not fit left of it (whole model blocks for a block-causal model, so that columns keep agreeing with
    positions). The rows already there keep their columns past the shift; the canvas grows to the right for
    the new answers, by whole blocks of the decode, with EOS hidden from the rows it does not belong to.
    Returns the layout and the shift."""
    size = info.block_size or 1
    lengths = prompt_mask.sum(1)
    starts = at + (lengths - at) % size
    shift = int(whole_blocks(int((lengths - starts).clamp(min=0).max()), size))
    starts = starts + shift
    ends = whole_blocks(starts + gen_length, size)
    width = max(shift + layout.x.shape[1], int(ends.max()))
    right = width - shift - layout.x.shape[1]  # columns the rows already there gain on the right
    columns = torch.arange(width, device=layout.x.device)[None, :]
    pads = (starts - lengths)[:, None]
    x = torch.full((len(lengths), width), info.mask_token_id, dtype=torch.long, device=layout.x.device)
    x[(columns >= pads) & (columns < starts[:, None])] = input_ids[prompt_mask.bool()]
    x = x.masked_fill((columns < pads) | (columns >= ends[:, None]), info.eos_token_id)
    # (the blocks' grid goes on: block-causal answers end at model block ends, which the decode's blocks divide)
    blocks = [(start + shift, end + shift) for start, end in layout.blocks]
    blocks += [(start, min(start + block_length, width)) for start in range(blocks[-1][1], width, block_length)]
    return Layout(x=torch.cat([widened(layout.x, shift, right, info.eos_token_id), x]),
                  real=torch.cat([widened(layout.real, shift, right, 1, left_fill=0), (columns >= pads).long()]),
                  answer_start=torch.cat([layout.answer_start + shift, starts]),
                  row_end=torch.cat([layout.row_end + shift, ends]), blocks=blocks), shift


def widened(tensor: torch.Tensor, left: int, right: int, fill: float, *, left_fill: float | None = None) -> torch.Tensor:
    """A (B, L) tensor with ``left`` columns before it and ``right`` after, holding ``fill`` (``left_fill``
    on the left where given)."""
    if not left and not right:
        return tensor
    before = tensor.new_full((tensor.shape[0], left), fill if left_fill is None else left_fill)
    return torch.cat([before, tensor, tensor.new_full((tensor.shape[0], right), fill)], dim=1)


def canvas_width(lengths: torch.Tensor, info: ModelInfo, gen_length: int) -> int:
    """How many columns :func:`lay_out` gives prompts of these ``lengths`` (as they come: left-padded to the
    longest, or more)."""
    longest, size = int(lengths.max()), info.block_size
    if size is None:
        return longest + gen_length
    return int((lengths // size).max()) * size + whole_blocks(int((lengths % size).max()) + gen_length, size)


@overload
def whole_blocks(columns: int, block_size: int) -> int: ...


@overload
def whole_blocks(columns: torch.Tensor, block_size: int) -> torch.Tensor: ...


def whole_blocks(columns: int | torch.Tensor, block_size: int) -> int | torch.Tensor:
    """``columns`` rounded up to a multiple of ``block_size``: a block-causal canvas ends with a whole block."""
    return -(-columns // block_size) * block_size


def prompt_tensors(
    input_ids: torch.Tensor | Sequence[Sequence[int]], attention_mask: torch.Tensor | None, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as left-padded ``(input_ids, attention_mask)`` tensors, checked."""
    if not isinstance(input_ids, torch.Tensor):
        if attention_mask is not None:
            raise ValueError("attention_mask is only accepted with an input_ids tensor")
        return pad_prompts(input_ids, pad_id)
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"input_ids must be a 2-D integer tensor (B, P), got {input_ids.dtype} {tuple(input_ids.shape)}")
    if attention_mask is None:
        return input_ids.long(), torch.ones_like(input_ids, dtype=torch.long)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}"
        )
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    return input_ids.long(), attention_mask.long()


def check_prompts(input_ids: torch.Tensor, prompt_mask: torch.Tensor, info: ModelInfo, gen_length: int) -> None:
    """Refuse prompts the model cannot read: empty ones, ids outside its vocabulary, too long a canvas (for a
    block-causal model, the canvas runs to the end of the block holding the answer's last position)."""
    lengths = prompt_mask.sum(1)
    if (lengths == 0).any():
        raise ValueError(f"input_ids: prompt(s) {(lengths == 0).nonzero().flatten().tolist()} are empty; "
                         "a prompt needs at least one token")
    ids = input_ids[prompt_mask.bool()]
    if (ids < 0).any():
        raise ValueError(f"input_ids: token id {int(ids.min())} is negative")
    if info.vocab_size is not None and (ids >= info.vocab_size).any():
        raise ValueError(f"input_ids: token id {int(ids.max())} is outside the model's vocabulary of "
                         f"{info.vocab_size}")
    width = canvas_width(lengths, info, gen_length)
    if info.max_positions is not None and width > info.max_positions:
        blocks = "" if info.block_size is None else f", rounded up to whole blocks of {info.block_size},"
        raise ValueError(f"input_ids: the longest prompt ({int(lengths.max())} tokens) plus gen_length={gen_length}"
                         f"{blocks} exceeds the model's {info.max_positions} positions")
