from __future__ import annotations

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, DecodeConfig, StepView
from unmask.core.validators import integer
from unmask.strategies._select import top_k_mask


@frozen(kw_only=True)
class FreeDavePolicy(Component):
    """Lossless parallel decoding: draft the next ``draft_steps`` states of one-token-per-step decoding
    from this step's confidences, score every draft in one batched forward, and accept the longest chain
    of drafts that one-token-per-step decoding would itself have reached. The output equals ``topk`` with
    one token per step (steps = gen length) token for token, with fewer forwards.

    FreeDave (Wu & Zhang 2025, "Free Draft-and-Verification: Toward Lossless Parallel Decoding for
    Diffusion LLMs", arXiv 2510.00294; cychomatica/FreeDave), static mode: draft d_k fills the k + 1 most
    confident masked positions of the block; the target of d_k is d_k plus its own most confident
    position under d_k's logits; d_{k+1} is verified when it equals that target. The accepted draft's
    logits serve the next step (``Commit.evaluated``), so each step costs one forward of K drafts. Greedy
    only (temperature 0); with ``draft_steps=1`` it is one-token-per-step ``topk``, forwards included.
    """

    draft_steps: int = field(default=4, validator=integer(minimum=1))

    def check_config(self, config: DecodeConfig) -> None:
        if config.temperature > 0:
            raise ValueError(f"freedave is lossless for greedy decoding only; got temperature={config.temperature}")

    def select(self, view: StepView) -> Commit:
        top1 = top_k_mask(view.candidate_confidence, torch.ones_like(view.schedule_k), block=view.block)
        left = view.candidates.sum(1)
        count = min(self.draft_steps, int(left.max()))
        if count <= 1 or view.evaluate is None:  # the block's last mask needs no forward to verify
            return Commit.of(top1, view)
        drafts = self._drafts(view, top1, count)
        # A row with one mask left takes its top-1 unverified, as alone: it needs (and counts) no forward.
        drafting = left > 1
        scored = view.evaluate(drafts, rows=drafting)
        # The one-token step from each draft, under that draft's own logits.
        targets = []
        for k in range(count):
            masked = (drafts[k] == view.mask_token_id) & view.window & view.row_active[:, None]
            confidence = scored.confidence[k].masked_fill(~masked, float("-inf"))
            step = top_k_mask(confidence, torch.ones_like(view.schedule_k), block=view.block)
            targets.append(torch.where(step, scored.x0[k], drafts[k]))
        verified = torch.stack([(drafts[k + 1] == targets[k]).all(1) for k in range(count - 1)], dim=1)
        best = verified.long().cumprod(1).sum(1) * drafting  # (B,) consecutive verified drafts from d_0
        accepted = drafts[best, torch.arange(len(best))]
        # Rows that drafted hand their accepted draft's logits to the next step; the others did not count
        # this forward, so their next step runs its own.
        return Commit(mask=accepted != view.x, tokens=accepted, evaluated=torch.where(drafting, best, -1))

    def _drafts(self, view: StepView, top1: torch.Tensor, count: int) -> torch.Tensor:
        """(count, B, L): d_0 is the one-token step itself; d_k adds the next k positions by confidence."""
        start, end = view.block
        ranked = view.candidate_confidence[:, start:end]
        order = ranked.argsort(dim=1, descending=True, stable=True)[:, :count]  # (B, count)
        usable = torch.isfinite(ranked.gather(1, order))  # rows with fewer masks repeat their last draft
        drafts, mask = [], top1.clone()
        for k in range(count):
            if k > 0:
                columns = order[:, k] + start
                add = usable[:, k] & ~mask.gather(1, columns[:, None])[:, 0]
                mask[torch.arange(len(columns))[add], columns[add]] = True
            drafts.append(torch.where(mask, view.x0, view.x))
        return torch.stack(drafts)
