"""The logits stage: each step's logits, from a forward through the cache manager's plan or from a candidate
canvas a policy already scored and committed (FreeDave's drafts: their logits serve the next step, which then
runs no forward), and the forwards between blocks (an exact cache storing a finished block; a shifted
block-causal model predicting a block's first token). It keeps the decode's forward counts."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from unmask.core.candidates import CandidateScorer, Reuse
from unmask.core.canvas import Canvas
from unmask.core.layout import Layout, whole_blocks
from unmask.core.model_info import ModelInfo
from unmask.core.scoring import check_logits, on_canvas, predict
from unmask.core.types import CanvasState, Commit, DecodeConfig, ForwardPlan

__all__ = ["LogitsSource", "Forward"]


@attrs.frozen
class Forward:
    """A step's logits over the columns ``[plan.start, plan.start + S)`` and whose they are."""

    logits: torch.Tensor  # (B, S, V); zeros for rows with no predictions this step
    plan: ForwardPlan
    reused: torch.Tensor  # (B,) bool: rows that took a scored candidate's logits
    scorer: CandidateScorer  # the step's ``view.evaluate``
    leave_one_out: torch.Tensor | None = None  # (B, W, V), for a policy that declares it (``view.leave_one_out``)

    def predictions(self, x: torch.Tensor, where: torch.Tensor, config: DecodeConfig, generator: torch.Generator,
                    mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 and its probability at canvas positions ``where`` (in the fed span); ``x`` and ``-inf`` elsewhere."""
        x0, confidence = predict(self.logits, config.temperature, generator, mask_id)
        return on_canvas(x, where, self.plan.start, x0, confidence)

    def block_logits(self, block: tuple[int, int]) -> torch.Tensor:
        """The block's slice of the span's logits; a block cut short by EoTP gives fewer columns."""
        start = self.plan.start
        if block[0] < start or block[0] >= start + self.logits.shape[1]:
            raise RuntimeError(f"the forward covered columns from {start} but the block starts at {block[0]}")
        return self.logits[:, block[0] - start:block[1] - start]


@attrs.define
class LogitsSource:
    """The decode's forwards: what each one feeds (the cache manager's plan over the canvas), the rows it is
    run for, the counts it adds, and the candidate logits kept for the next step."""

    model: Any
    cache: Any  # a CacheManager with the abilities of Component
    info: ModelInfo
    layout: Layout
    canvas: Canvas
    config: DecodeConfig
    generator: torch.Generator
    nfe: torch.Tensor  # (B,) forwards each row took part in
    candidate_rows: torch.Tensor  # (B,) candidate canvases each row sent through a forward
    recomputed: torch.Tensor  # (B,) positions x layers each row's forwards computed (DecodeResult.recomputed)
    reuse: Reuse | None = None  # logits of a committed candidate, for the next step
    leave_one_out: bool = False  # each forward also predicts every block position without its own token

    def check(self) -> None:
        """Refuse what the decode's forwards cannot give, before the first one."""
        info = self.info
        if self.leave_one_out and (info.block_size is not None or info.shift_logits or not info.accepts_pair_mask):
            raise ValueError("policy: it reads leave-one-out predictions (leave_one_out), which need a model that "
                             "attends bidirectionally, predicts each position at its own column (not shifted) "
                             "and takes (B, 1, Q, K) attention masks (accepts_pair_mask)")

    @property
    def largest_id(self) -> int:
        return max(self.info.mask_token_id, self.info.eos_token_id)

    def state(self, x: torch.Tensor, block: tuple[int, int], step: int, extra: int = 0) -> CanvasState:
        """What a forward of ``x`` sees: columns past a row's end are hidden from it; a block-causal model needs
        none after its model block (``extra`` more: a shifted model's prediction of the next block's first
        token)."""
        visible = int(self.canvas.row_end.max())
        if self.info.block_size is not None:
            visible = min(visible, whole_blocks(block[1], self.info.block_size) + extra)
        columns = torch.arange(visible, device=x.device)
        attention = self.layout.real[:, :visible] * (columns[None, :] < self.canvas.row_end[:, None])
        return CanvasState(input_ids=x[:, :visible], attention_mask=attention,
                           position_ids=(attention.cumsum(-1) - 1).clamp(min=0), block_start=block[0],
                           block_end=block[1], step=step, lookbehind=int(self.info.shift_logits),
                           gen_start=self.layout.gen_start)

    def open_block(self, index: int, done: torch.Tensor, global_step: int) -> None:
        """Before a block's first step: the cache's forward on the block just finished (``finish_block``: an
        exact cache stores its keys and values), for the rows with a part of it and of what follows; and a
        shifted block-causal model's first token of the block, by argmax from the previous block's last
        position, outside the block's own forwards (as Fast-dLLM v2 does)."""
        block, canvas, size = self.layout.blocks[index], self.canvas, self.info.block_size
        seeded = self.info.shift_logits and size is not None and block[0] % size == 0
        seed: tuple[torch.Tensor, int] | None = None  # (logits, their first column)
        if index:
            finished = self.layout.blocks[index - 1]
            storing = ~done & (canvas.row_end > finished[0]) & (self.layout.row_end > block[0])
            if storing.any() and (size is None or finished[1] % size == 0):
                state = self.state(canvas.x, finished, 0, extra=int(seeded))
                plan = self.cache.finish_block(state)
                if plan is not None:
                    logits = self._forward(canvas.x, state, plan, storing, global_step)
                    seed = (logits, plan.start) if seeded and plan.end > block[0] else None
        if not seeded:
            return
        rows = ~done & (canvas.row_end > block[0]) & (canvas.x[:, block[0]] == self.info.mask_token_id)
        if not rows.any():
            return
        if seed is None:  # no finishing forward reached the block's first column: one forward
            state = self.state(canvas.x, block, 0)
            plan = self.cache.plan(state)
            seed = (self._forward(canvas.x, state, plan, rows, global_step), plan.start)
        logits, offset = seed
        first, confidence = predict(logits[:, block[0] - offset][:, None], self.config.temperature, self.generator,
                                    self.info.mask_token_id)
        mask = torch.zeros_like(canvas.x, dtype=torch.bool)
        mask[:, block[0]] = rows
        canvas.apply(Commit(mask=mask, tokens=first[:, :1].expand_as(canvas.x)), global_step,
                     confidence[:, :1].expand(canvas.x.shape))

    def logits(self, block: tuple[int, int], step: int, row_active: torch.Tensor, global_step: int) -> Forward:
        """The step's logits: what the cache plans, fed for the active rows, except rows whose canvas is a
        candidate scored last step, which take its logits and count no forward."""
        x = self.canvas.x
        state = self.state(x, block, step)
        plan = self.cache.plan(state)
        scorer = CandidateScorer(
            model=self.model, cache_manager=self.cache, next_state=lambda x: self.state(x, block, step + 1), x=x,
            row_active=row_active, nfe=self.nfe, candidate_rows=self.candidate_rows,
            temperature=self.config.temperature, generator=self.generator, mask_id=self.info.mask_token_id,
            largest_id=self.largest_id, global_step=global_step,
        )
        if self.leave_one_out:
            logits, shadow = self._forward_leaving_one_out(x, state, plan, row_active, block, global_step)
            return Forward(logits=logits, plan=plan, reused=torch.zeros_like(row_active), scorer=scorer,
                           leave_one_out=shadow)
        reuse = self.reuse
        reused = reuse.rows(plan, x) if reuse is not None else torch.zeros_like(row_active)
        fed = row_active & ~reused
        if reuse is not None and not fed.any():
            logits = reuse.logits
        else:
            logits = self._forward(x, state, plan, fed, global_step)
            if reuse is not None and reused.any():
                logits = torch.where(reused[:, None, None], reuse.logits, logits)
        return Forward(logits=logits, plan=plan, reused=reused, scorer=scorer)

    def keep(self, forward: Forward, decision: Commit, as_decided: torch.Tensor) -> None:
        """After the commit: the logits of the candidate each row committed (``Commit.evaluated``) for the next
        step, for the rows whose canvas is what the policy decided (``as_decided``)."""
        if decision.evaluated is not None:
            evaluated = torch.where(as_decided, decision.evaluated, -1)
            self.reuse = forward.scorer.reuse(evaluated, self.canvas.x, self.reuse)

    def _forward(self, x: torch.Tensor, state: CanvasState, plan: ForwardPlan, rows: torch.Tensor,
                 global_step: int) -> torch.Tensor:
        """The plan's forward, (B, end - start, V) logits, computed for ``rows`` (B,) bool only where it can be:
        the other rows (done, through with the block, or reusing a candidate's logits) get zeros instead of a
        share of the forward. All rows are fed when the forward fills a cache (later steps read every row of
        it) or the cache manager cannot cut its rows (``rows_of``); a row's logits never depend on the other
        rows fed beside it. Counts a forward for ``rows``."""
        self.nfe += rows.long()
        if plan.run is not None:  # the cache runs the model itself, a layer at a time
            ran, recomputed = plan.run(rows)
            check_logits(ran, (x.shape[0], plan.end - plan.start), self.largest_id, global_step)
            self.recomputed += torch.where(rows, recomputed, 0)
            return ran
        self.recomputed += rows.long() * (plan.end - plan.start) * (self.info.num_layers or 1)
        span, cache = slice(plan.start, plan.end), plan.past_key_values
        index: Any = slice(None)
        if not bool(rows.all()) and not plan.fills_cache:
            selected = rows.nonzero().flatten()
            cut = None if cache is None else self.cache.rows_of(cache, selected)
            if cache is None or cut is not None:
                index, cache = selected, cut
        fed = x[index, span]
        logits: torch.Tensor = self.model(fed, position_ids=state.position_ids[index, span],
                            attention_mask=plan.attention_mask[index], past_key_values=cache)
        check_logits(logits, (fed.shape[0], fed.shape[1]), self.largest_id, global_step)
        if isinstance(index, slice):
            return logits
        full = logits.new_zeros((x.shape[0], *logits.shape[1:]))
        full[index] = logits
        return full

    def _forward_leaving_one_out(self, x: torch.Tensor, state: CanvasState, plan: ForwardPlan, rows: torch.Tensor,
                                 block: tuple[int, int], global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of the whole canvas with a masked copy of the block appended (a "shadow" block): copy
        position j has block position j's position id and attends to every real column but its twin, and to
        the whole copy; no canvas column attends to the copy, so the canvas's logits are the plain forward's.
        Returns (B, L, V) canvas logits and (B, W, V) copy logits, zeros for rows not in ``rows`` and for block
        columns past the canvas the forward sees."""
        if plan.start != 0 or plan.past_key_values is not None:
            raise ValueError("policy: leave-one-out predictions need every column in each forward: cache='none'")
        self.nfe += rows.long()
        index = rows.nonzero().flatten()
        self.recomputed += rows.long() * (plan.end + block[1] - block[0]) * (self.info.num_layers or 1)
        fed, real = x[index, :plan.end], plan.attention_mask[index].bool()
        # The copy covers the block's columns the forward sees (a stop or a constraint may have cut the rest).
        rows_fed, length = len(index), fed.shape[1]
        width = max(0, min(block[1], length) - block[0])
        ids = torch.cat([fed, fed.new_full((rows_fed, width), self.info.mask_token_id)], 1)
        twins = state.position_ids[index, block[0]:block[0] + width]
        positions = torch.cat([state.position_ids[index, :length], twins], 1)
        columns = torch.arange(length, device=x.device)
        twin = columns[None, :] == torch.arange(block[0], block[0] + width, device=x.device)[:, None]  # (W, L)
        seen = torch.zeros((rows_fed, length + width, length + width), dtype=torch.bool, device=x.device)
        seen[:, :length, :length] = real[:, None, :]
        seen[:, length:, :length] = real[:, None, :] & ~twin[None]
        seen[:, length:, length:] = True
        seen |= torch.eye(length + width, dtype=torch.bool, device=x.device)[None]  # (padding sees itself)
        bias = torch.zeros(seen.shape, dtype=torch.float32, device=x.device).masked_fill(
            ~seen, torch.finfo(torch.float32).min)
        logits: torch.Tensor = self.model(ids, position_ids=positions, attention_mask=bias[:, None])
        check_logits(logits, (rows_fed, length + width), self.largest_id, global_step)
        full = logits.new_zeros((x.shape[0], length, logits.shape[-1]))
        shadow = logits.new_zeros((x.shape[0], block[1] - block[0], logits.shape[-1]))
        full[index], shadow[index, :width] = logits[:, :length], logits[:, length:]
        return full, shadow
