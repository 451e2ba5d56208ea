"""Hypothesis strategies for step views and decode configs."""

from __future__ import annotations

import attrs
import torch
from hypothesis import strategies as st

from unmask.core.types import DecodeConfig, StepView

__all__ = ["step_views", "committed_views", "after_commit", "decode_configs"]


@st.composite
def step_views(draw: st.DrawFn, *, max_batch: int = 3, max_block: int = 8, max_blocks: int = 3) -> StepView:
    """A view at a random step of a semi-autoregressive decode: earlier blocks committed, the current
    block partly committed, later blocks masked, some rows cut short by an EOS tail or already done."""
    batch = draw(st.integers(1, max_batch))
    prompt = draw(st.integers(0, 4))
    block = draw(st.integers(1, max_block))
    blocks = draw(st.integers(1, max_blocks))
    block_index = draw(st.integers(0, blocks - 1))
    vocab = draw(st.integers(6, 16))
    seed = draw(st.integers(0, 2**31 - 1))
    committed_share = draw(st.floats(0.0, 0.9))
    sharpness = draw(st.floats(0.5, 8.0))
    generator = torch.Generator().manual_seed(seed)
    mask_id, eos_id = vocab - 1, vocab - 2
    width = prompt + blocks * block
    block_start = prompt + block_index * block
    block_end = block_start + block

    def content(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, vocab - 2, shape, generator=generator)

    x = content((batch, width))
    x[:, block_start:] = mask_id
    in_block = torch.rand((batch, block), generator=generator) < committed_share
    x[:, block_start:block_end] = torch.where(in_block, content((batch, block)), x[:, block_start:block_end])
    # Rows cut by EoTP: an EOS tail from a random column of the block on.
    cut_at = torch.randint(block_start, block_end + 1, (batch,), generator=generator)
    is_cut = torch.rand(batch, generator=generator) < 0.25
    tail = is_cut[:, None] & (torch.arange(width)[None, :] >= cut_at[:, None]) & (x == mask_id)
    x = x.masked_fill(tail, eos_id)

    logits = torch.randn((batch, width, vocab), generator=generator, dtype=torch.float64) * sharpness
    logits[..., mask_id] = float("-inf")
    probs = torch.softmax(logits, -1)
    confidence, prediction = probs.max(-1)
    masked = x == mask_id
    window = torch.zeros_like(masked)
    window[:, block_start:block_end] = True
    done = torch.rand(batch, generator=generator) < 0.15
    step = draw(st.integers(0, block - 1))
    total_steps = blocks * block
    global_step = block_index * block + step
    # Each written answer position's step: earlier blocks before this block's first step, the block's own in
    # its steps so far (-1 where none wrote: prompt, masks).
    earlier = torch.randint(0, max(1, block_index * block), (batch, width), generator=generator)
    own = torch.randint(global_step - step, max(global_step - step + 1, global_step), (batch, width),
                        generator=generator)
    columns = torch.arange(width)[None, :]
    commit_step = torch.where(columns < block_start, earlier, own).masked_fill(masked | (columns < prompt), -1)
    # Leave-one-out logits of the block (for a policy that declares it), near the canvas's own.
    leave_one_out = logits[:, block_start:block_end] + torch.randn((batch, block, vocab), generator=generator,
                                                                    dtype=torch.float64)
    leave_one_out[..., mask_id] = float("-inf")
    return StepView(
        x=x, x0=torch.where(masked, prediction, x), confidence=confidence.masked_fill(~masked, float("-inf")),
        masked=masked, window=window, row_active=~done & (masked & window).any(1),
        schedule_k=torch.randint(1, block + 1, (batch,), generator=generator),
        nfe=torch.randint(step + 1, 4 * width + 2, (batch,), generator=generator),
        logits=logits[:, block_start:block_end], generator=torch.Generator().manual_seed(seed),
        gen_start=prompt, block_start=block_start, block_end=block_end, block_index=block_index, step=step,
        mask_token_id=mask_id, eos_token_id=eos_id, global_step=global_step, total_steps=total_steps,
        span_logits=logits.float(), span_start=0,  # a forward without cache: every column
        commit_step=commit_step, leave_one_out=leave_one_out.float(),
    )


def after_commit(view: StepView, commit: torch.Tensor) -> StepView:
    """The view a stop criterion sees once ``commit`` (a subset of candidates) took its predictions."""
    commit = commit & view.candidates
    return attrs.evolve(view, x=torch.where(commit, view.x0, view.x), committed=commit)


@st.composite
def committed_views(draw: st.DrawFn, **kwargs: int) -> StepView:
    """A post-commit view: a random subset of the candidates took their predictions."""
    view = draw(step_views(**kwargs))
    share = draw(st.floats(0.0, 1.0))
    picks = torch.rand(view.x.shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16)))) < share
    return after_commit(view, picks)


@st.composite
def decode_configs(draw: st.DrawFn, *, max_gen_length: int = 24) -> DecodeConfig:
    """Valid configs: block length divides gen length, steps a multiple of the block count."""
    block = draw(st.integers(1, 8))
    blocks = draw(st.integers(1, max(1, max_gen_length // block)))
    steps_per_block = draw(st.integers(1, block))
    return DecodeConfig(
        gen_length=block * blocks, block_length=block, steps=steps_per_block * blocks,
        temperature=draw(st.sampled_from([0.0, 0.0, 0.7])), seed=draw(st.integers(0, 1000)),
    )
