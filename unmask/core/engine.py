"""The denoising loop: LLaDA's semi-autoregressive block schedule with pluggable decisions.

The engine owns the loop and its invariants (commits stay inside masked positions of the block, every
active row progresses, a committed token changes only through a decision's declared re-mask or edit, the
loop stays bounded); policies, stop criteria and caches own decisions.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Generator, Sequence

import attrs
import torch

from unmask.core.canvas import REMASKS_PER_POSITION, Canvas
from unmask.core.component import Component
from unmask.core.forwards import Forward, LogitsSource
from unmask.core.layout import Layout, block_columns, check_prompts, joined, lay_out, pad_prompts, prompt_tensors
from unmask.core.model_info import ModelInfo
from unmask.core.plugins import ROLES, create, describe, plugin_manager
from unmask.core.selection import selection
from unmask.core.spec import Spec
from unmask.core.types import (
    CacheManager, Constraint, DecodeConfig, DecodeResult, DenoiserModel, StepObserver, StepView, StopCriterion,
    UnmaskPolicy,
)

__all__ = ["decode", "steps", "Decoding", "block_columns", "linear_schedule", "model_block_size", "own_cache", "pad_prompts",
           "REMASKS_PER_POSITION"]



def linear_schedule(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,) masked counts -> (B, steps) tokens per step: an even split, extras first (LLaDA)."""
    base, remainder = masked_count // steps, masked_count % steps
    extra = torch.arange(steps, device=masked_count.device)[None, :] < remainder[:, None]
    return base[:, None] + extra.long()


def check_config(components: Sequence[Component | None], config: DecodeConfig) -> None:
    """Let each component refuse ``config`` before any forward (``Component.check_config``: a filter trained
    on another block length, say): a ``ValueError`` there names the component's rule."""
    for component in components:
        if component is not None:
            component.check_config(config)


def decode(
    model: DenoiserModel,
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    *,
    attention_mask: torch.Tensor | None = None,
    config: DecodeConfig | None = None,
    policy: UnmaskPolicy | Spec = "topk",
    stop: StopCriterion | Spec | Sequence[StopCriterion | Spec] | None = "none",
    cache: CacheManager | Spec | None = None,
    constraint: Constraint | Spec | None = None,
    tokenizer: Any = None,
    on_step: StepObserver | None = None,
    **settings: Any,
) -> DecodeResult:
    """Fill ``gen_length`` masked positions after each prompt, block by block.

    ``input_ids`` is a left-padded (B, P) tensor with its ``attention_mask``, or a list of token lists.
    ``policy``, ``stop`` and ``cache`` are components or specs (``"threshold:tau=0.9"``, ``("topk", {"k": 2})``);
    a list of stops is their ``any`` and ``None`` is ``"none"``; ``cache=None`` is the model's own: ``"exact"``
    for a block-causal model (one with a ``block_size``) that takes a KV cache, else ``"none"``.
    ``constraint`` (``"regex:pattern='...'"``) keeps every answer completable into a word of its language; it
    reads the tokens' text through ``tokenizer``. ``settings`` are :class:`DecodeConfig` fields when no
    ``config`` is given. :func:`steps` runs the same loop a step at a time.
    """
    return steps(model, input_ids, attention_mask=attention_mask, config=config, policy=policy, stop=stop,
                 cache=cache, constraint=constraint, tokenizer=tokenizer, on_step=on_step, **settings).run()


def steps(model: DenoiserModel, input_ids: torch.Tensor | Sequence[Sequence[int]], **arguments: Any) -> Decoding:
    """The decode of :func:`decode` (same arguments), a step at a time: iterate the returned
    :class:`Decoding` for each step's view after its commits; between steps, ``retire(rows)`` finishes rows
    and ``add(prompts)`` adds rows; ``result`` holds the :class:`DecodeResult` once the iteration ends
    (``run()`` finishes it). Arguments are checked here, before the first step."""
    return Decoding(model, input_ids, arguments)


class Decoding:
    """A decode in progress. Each step runs in ``torch.inference_mode`` when the iteration asks for it; the
    caller's code between steps runs outside it. Views are the engine's own: read them, do not change them."""

    def __init__(self, model: DenoiserModel, input_ids: Any, arguments: dict[str, Any]) -> None:
        self._run = _Run.start(model, input_ids, **arguments)
        self._steps = _steps(self._run)
        self.result: DecodeResult | None = None

    def __iter__(self) -> Decoding:
        return self

    def __next__(self) -> StepView:
        try:
            with torch.inference_mode():
                return next(self._steps)
        except StopIteration as finished:
            self.result = finished.value
            raise

    def retire(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Finish these rows (indices into the decode's batch, or a (B,) bool mask) at the next step, as a stop
        criterion would: their remaining masks take the latest predictions; the other rows go on unchanged."""
        rows = torch.as_tensor(rows)
        self._run.retired |= set((rows.nonzero().flatten() if rows.dtype == torch.bool else rows.flatten()).tolist())

    def add(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """Add a row for each prompt (a token list): the rows join at the decode's next block boundary (a step
        boundary), laid out as they would be alone, and decode with the decode's components and config, their
        ``commit_step`` counted from the step they join at. Returns their indices in the batch, after every row
        already in it. Refused where a row would not decode as it does alone: components that read the decode's
        clock (``reads_clock``) or its shared random stream (``stochastic``, temperature > 0), or a decode
        that has ended."""
        if self.result is not None:
            raise RuntimeError("add: the decode has ended; start a new one")
        return self._run.add(prompts)

    @property
    def joinable(self) -> bool:
        """Whether :meth:`add` takes rows."""
        return self.result is None and self._run.join_refusal() is None

    def finished(self) -> list[int]:
        """The rows whose answers no later step changes: stopped or retired, or filled with their last block
        closed (rows waiting to join are not among them)."""
        return self._run.finished().nonzero().flatten().tolist()

    def rows(self, rows: Sequence[int]) -> DecodeResult:
        """The result of these rows as they stand now (final for the rows :meth:`finished` lists)."""
        batch = len(self._run.canvas.x)
        if any(not 0 <= row < batch for row in rows):
            raise ValueError(f"rows: the batch has rows 0 to {batch - 1} now (rows added join at the next block "
                             f"boundary), got {list(rows)}")
        return self._run.result(torch.as_tensor(list(rows), dtype=torch.long))

    def run(self) -> DecodeResult:
        """Decode the remaining steps; the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


@attrs.define(eq=False)
class _Run:
    """A decode's state between steps: its stages and the rows' canvas, counts and progress."""

    model: Any
    config: DecodeConfig
    info: ModelInfo
    parts: dict[str, Any]
    layout: Layout
    canvas: Canvas
    source: LogitsSource
    select: Any  # a Selection
    generator: torch.Generator
    done: torch.Tensor  # (B,) bool: stopped or retired
    first_step: torch.Tensor  # (B,) long: the global step each row joined at
    after_fill: torch.Tensor  # (B,) long: steps the current block stays open for each row after its last mask
    started: float
    on_step: StepObserver | None
    retired: set[int] = attrs.Factory(set)  # rows a caller finished between steps
    joining: list[list[int]] = attrs.Factory(list)  # prompts waiting for the next block boundary

    @classmethod
    def start(cls, model: DenoiserModel, input_ids: torch.Tensor | Sequence[Sequence[int]], *,
              attention_mask: torch.Tensor | None = None, config: DecodeConfig | None = None,
              policy: UnmaskPolicy | Spec = "topk",
              stop: StopCriterion | Spec | Sequence[StopCriterion | Spec] | None = "none",
              cache: CacheManager | Spec | None = None, constraint: Constraint | Spec | None = None,
              tokenizer: Any = None, on_step: StepObserver | None = None, **settings: Any) -> _Run:
        """The decode's set-up: arguments checked, components created, the canvas laid out."""
        if config is None:
            config = DecodeConfig(**settings)
        elif settings:
            raise TypeError(f"pass either config or settings, not both (got settings {sorted(settings)})")
        info = ModelInfo.of(model, config)
        input_ids, prompt_mask = prompt_tensors(input_ids, attention_mask, info.eos_token_id)
        check_prompts(input_ids, prompt_mask, info, config.gen_length)
        layout = lay_out(input_ids, prompt_mask, info, config.gen_length, config.num_block_tokens)
        parts = _components(policy, stop, info.own_cache if cache is None else cache, constraint)
        check_config(list(parts.values()), config)
        generator = torch.Generator(device=input_ids.device).manual_seed(config.seed)
        select = selection(parts["policy"], parts.get("constraint"), config=config, generator=generator,
                           tokenizer=tokenizer, vocab_size=model.vocab_size, mask_id=info.mask_token_id,
                           eos_id=info.eos_token_id, gen_start=layout.gen_start,
                           name=_name("constraints", parts.get("constraint")))
        started = time.perf_counter()
        canvas = Canvas.of(layout, info.mask_token_id, info.eos_token_id)
        counts = torch.zeros(len(canvas.x), dtype=torch.long, device=canvas.x.device)
        source = LogitsSource(model, parts["cache"], info, layout, canvas, config, generator, nfe=counts,
                              candidate_rows=counts.clone(), recomputed=counts.clone(),
                              leave_one_out=parts["policy"].leave_one_out)
        source.check()
        parts["cache"].reset(model)
        return cls(model=model, config=config, info=info, parts=parts, layout=layout, canvas=canvas, source=source,
                   select=select, generator=generator, done=torch.zeros_like(counts, dtype=torch.bool),
                   first_step=counts.clone(), after_fill=counts.clone(), started=started, on_step=on_step)

    def join_refusal(self) -> str | None:
        """Why rows cannot join this decode, or None."""
        clocked = [role for role, part in self.parts.items()
                   if part.reads_clock or (role == "policy" and part.stochastic)]
        if clocked or self.config.temperature > 0:
            what = f"its {clocked[0]} reads the decode's clock or random stream" if clocked else "temperature > 0"
            return f"rows cannot join this decode ({what}): they would not decode as they do alone"
        return None

    def add(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        refusal = self.join_refusal()
        if refusal is not None:
            raise ValueError(f"add: {refusal}")
        input_ids, prompt_mask = prompt_tensors([list(prompt) for prompt in prompts], None,
                                               self.info.eos_token_id)
        check_prompts(input_ids, prompt_mask, self.info, self.config.gen_length)
        first = len(self.canvas.x) + len(self.joining)
        self.joining += [list(prompt) for prompt in prompts]
        return list(range(first, first + len(prompts)))

    def join(self, block_index: int, global_step: int) -> None:
        """The rows waiting to join, laid out from the block ``block_index`` starts (its start, or the canvas's
        end once every block is done); the cache starts afresh for the grown batch (a block cache rebuilds at a
        block's first step anyway; the exact cache stores every finished block again, a joining row's prompt
        in that forward), and a candidate's logits kept for reuse move with their rows."""
        blocks = self.layout.blocks
        at = blocks[block_index][0] if block_index < len(blocks) else blocks[-1][1]
        input_ids, prompt_mask = pad_prompts(self.joining, self.info.eos_token_id)
        self.joining = []
        layout, shift = joined(attrs.evolve(self.layout, x=self.canvas.x), input_ids.to(self.canvas.x.device),
                               prompt_mask.to(self.canvas.x.device), self.info, self.config.gen_length,
                               self.config.num_block_tokens, at)
        self.layout, self.canvas = layout, self.canvas.joined(layout, shift)
        reuse = self.source.reuse
        reuse = None if reuse is None else reuse.joined(shift, self.canvas.x, int(self.canvas.row_end.max()))

        def more(tensor: torch.Tensor, value: int) -> torch.Tensor:
            return torch.cat([tensor, tensor.new_full((len(input_ids),), value)])

        self.done, self.first_step = more(self.done, False), more(self.first_step, global_step)
        self.source = attrs.evolve(self.source, layout=layout, canvas=self.canvas, nfe=more(self.source.nfe, 0),
                                   candidate_rows=more(self.source.candidate_rows, 0),
                                   recomputed=more(self.source.recomputed, 0), reuse=reuse)
        self.parts["cache"].reset(self.model)

    def open_block(self, block_index: int, global_step: int) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
        """The block's columns, window and schedule, after the forwards between blocks."""
        block = self.layout.blocks[block_index]
        self.source.open_block(block_index, self.done, global_step)
        window = self.canvas.window(block)
        masks = (self.canvas.x[:, block[0]:block[1]] == self.info.mask_token_id).sum(1)
        self.after_fill = _steps_after_fill(self.parts["policy"], self.canvas, window, self.done)
        return block, window, linear_schedule(masks, self.config.steps_per_block)

    def finished(self) -> torch.Tensor:
        """(B,) bool: rows no later step changes."""
        open_ = ((self.canvas.x == self.canvas.mask_id) & self.canvas.visible_answer).any(1)
        return self.done | ~(open_ | (self.after_fill > 0))

    def result(self, rows: torch.Tensor | None = None) -> DecodeResult:
        """The result of ``rows`` (all: None) as they stand: each row's ``gen_length`` answer columns (a
        block-causal canvas runs on to its block's end), commit steps counted from the step it joined at."""
        canvas, source, config = self.canvas, self.source, self.config
        index = slice(None) if rows is None else rows
        answer = self.layout.answer_start[index, None] + torch.arange(config.gen_length, device=canvas.x.device)
        tokens = canvas.x[index].gather(1, answer)
        is_eos = tokens == canvas.eos_id
        answer_lengths = torch.where(is_eos.any(1), is_eos.long().argmax(1),
                                     torch.full_like(source.nfe[index], config.gen_length))
        commit_step = canvas.commit_step[index].gather(1, answer)
        commit_step = torch.where(commit_step >= 0, commit_step - self.first_step[index, None], commit_step)
        return DecodeResult(
            tokens=tokens, answer_lengths=answer_lengths, nfe=source.nfe[index], commit_step=commit_step,
            wall_s=time.perf_counter() - self.started, config=config,
            components={role: describe(ROLES[role], part) for role, part in self.parts.items()},
            candidate_rows=source.candidate_rows[index], recomputed=source.recomputed[index],
        )


def _steps(run: _Run) -> Generator[StepView, None, DecodeResult]:
    """The loop over the stages: layout (``unmask.core.layout``), logits (``forwards``), selection
    (``selection``, a constraint wrapping the policy), commit (``canvas``), stop. Yields each step's view after
    its commits; returns the result. Rows a caller adds join at the top of a block."""
    config, parts, select, generator = run.config, run.parts, run.select, run.generator
    mask_id, eos_id = run.info.mask_token_id, run.info.eos_token_id
    observers = plugin_manager().hook.unmask_on_step
    notify = bool(observers.get_hookimpls())
    block_index = global_step = 0
    while True:
        if run.joining:
            run.join(block_index, global_step)
        if block_index == len(run.layout.blocks):
            break
        (block, window, schedule), canvas, source = run.open_block(block_index, global_step), run.canvas, run.source
        total_steps = len(run.layout.blocks) * config.steps_per_block
        for step in itertools.count():
            x, masked = canvas.x, canvas.x == mask_id
            filling = (masked & window).any(1)
            row_active = ~run.done & (filling | (run.after_fill > 0))
            if not row_active.any():
                break
            # Past the schedule's last step (a policy that committed less), one token per step.
            k = schedule[:, step] if step < config.steps_per_block else torch.ones_like(source.nfe)

            def view_of(forward: Forward, x0: torch.Tensor, confidence: torch.Tensor) -> StepView:
                return StepView(
                    x=x, x0=x0, confidence=confidence, masked=masked, window=window, row_active=row_active,
                    schedule_k=k, nfe=source.nfe.clone(), recomputed=source.recomputed.clone(),
                    logits=forward.block_logits(block), generator=generator, gen_start=run.layout.gen_start,
                    answer_start=run.layout.answer_start, row_end=canvas.row_end, block_start=block[0],
                    block_end=block[1],
                    block_index=block_index, step=step, mask_token_id=mask_id, eos_token_id=eos_id,
                    global_step=global_step, total_steps=total_steps,
                    span_logits=forward.logits, span_start=forward.plan.start, evaluate=forward.scorer,
                    commit_confidence=canvas.confidence, commit_step=canvas.commit_step,
                    leave_one_out=forward.leave_one_out)

            forward = source.logits(block, step, row_active, global_step)
            forward = select.restrict(forward, lambda f: view_of(f, x, torch.zeros(x.shape, dtype=torch.float64)))
            # Rows neither fed nor reused (done, or through with the block) have no predictions this step.
            scored = masked & (row_active | forward.reused)[:, None]
            view = view_of(forward, *forward.predictions(x, scored, config, generator, mask_id))
            decision, view, as_decided = select.choose(view, forward, canvas)
            canvas.apply(decision, global_step, view.confidence)
            as_decided &= ~select.end_answers(view, decision, canvas, global_step)
            source.keep(forward, decision, as_decided)
            view = attrs.evolve(view, x=canvas.x, committed=decision.mask, remasked=decision.remask,
                                edited=decision.edit, nfe=source.nfe.clone(), recomputed=source.recomputed.clone(),
                                evaluate=None, commit_confidence=canvas.confidence)
            run.done |= _stop(parts["stop"], view, canvas, run.done, _rows(run.retired, run.done), global_step)
            if parts["policy"].steps_after_fill:  # (no bookkeeping for a policy that declares none)
                edited = torch.zeros_like(run.done) if decision.edit is None else decision.edit.any(1)
                run.after_fill = torch.where(row_active & ~filling, (run.after_fill - 1) * edited, run.after_fill)
            if run.on_step is not None:
                run.on_step(view)
            if notify:
                observers(view=view)
            yield view
            global_step += 1
        block_index += 1
    return run.result()


def _rows(indices: set[int], like: torch.Tensor) -> torch.Tensor:
    """(B,) bool like ``like``: the rows at these indices."""
    rows = torch.zeros_like(like, dtype=torch.bool)
    rows[sorted(i for i in indices if i < len(rows))] = True
    return rows


def _steps_after_fill(policy: Any, canvas: Canvas, window: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """(B,) steps each row's block may stay open after its last mask (``Component.steps_after_fill``), for the
    rows with answer positions in the block: a step that begins with no mask and edits nothing closes it."""
    has_answer = (window & canvas.visible_answer).any(1) & ~done
    return has_answer.long() * int(policy.steps_after_fill)


def _components(policy: Any, stop: Any, cache: Any, constraint: Any) -> dict[str, Any]:
    """The decode's components, created from their specs (a list of stops is their ``any``)."""
    if isinstance(stop, (list, tuple)) and not (len(stop) == 2 and isinstance(stop[1], dict)):
        stop = ("any", {"stops": stop})
    parts = {"policy": create("policies", policy), "stop": create("stops", "none" if stop is None else stop),
             "cache": create("caches", cache)}
    if constraint is not None:
        parts["constraint"] = create("constraints", constraint)
    return parts


def _name(kind: str, component: Any) -> str:
    return "" if component is None else str(describe(kind, component)["name"])


def _stop(criterion: Any, view: StepView, canvas: Canvas, done: torch.Tensor, retiring: torch.Tensor,
          step: int) -> torch.Tensor:
    """The stop stage: (B,) rows the criterion (or the caller: ``retiring``) finished this step, their
    remaining masks filled from the latest predictions; EoTP's cut after the answer's end applied."""
    decision = criterion.check(view)
    if decision.end is not None and (decision.end >= 0).any():
        canvas.cut(decision.end, step)
    newly_done: torch.Tensor = (decision.done | retiring) & ~done
    if newly_done.any():
        canvas.finalise(view.x0, newly_done, step)
    return newly_done


def own_cache(model: Any) -> str:
    """The cache a model decodes with by default: the exact cache of finished blocks where attention is
    block-causal and the model takes a KV cache, else none."""
    return ModelInfo.of(model).own_cache


def model_block_size(model: Any, config: DecodeConfig) -> int | None:
    """A block-causal model's block size (its ``block_size`` attribute): the decode's blocks are it or
    sub-blocks of it."""
    return ModelInfo.of(model, config).block_size
