"""The denoising loop: LLaDA's semi-autoregressive block schedule with pluggable decisions.

The engine owns the loop and its invariants (commits stay inside masked positions of the block, every
active row progresses, a committed token changes only through a decision's declared re-mask or edit, the
loop stays bounded); policies, stop criteria and caches own decisions.
"""

from __future__ import annotations

import time
from typing import Any, Generator, Sequence

import attrs
import torch

from unmask.core.candidates import CandidateScorer, Reuse
from unmask.core.constraints import choose, forced_ends, restrict, vocabulary_of
from unmask.core.model_info import ModelInfo
from unmask.core.plugins import create, describe, plugin_manager
from unmask.core.scoring import check_logits, on_canvas, predict
from unmask.core.spec import Spec
from unmask.core.types import (
    CacheManager, CanvasState, Commit, Constraint, DecodeConfig, DecodeResult, DenoiserModel, ForwardPlan,
    StepObserver, StepView, StopCriterion, UnmaskPolicy,
)

__all__ = ["decode", "steps", "Decoding", "block_columns", "linear_schedule", "model_block_size", "own_cache", "pad_prompts",
           "REMASKS_PER_POSITION"]

# How often one position may return to the mask in a decode. An active row fills at least one position per
# step and re-masks only within the current block, so a block of W positions ends within
# W * (1 + REMASKS_PER_POSITION) steps (tests/test_engine.py checks the bound with hypothesis).
REMASKS_PER_POSITION = 4


def linear_schedule(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,) masked counts -> (B, steps) tokens per step: an even split, extras first (LLaDA)."""
    base, remainder = masked_count // steps, masked_count % steps
    extra = torch.arange(steps, device=masked_count.device)[None, :] < remainder[:, None]
    return base[:, None] + extra.long()


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


def check_config(components: Sequence[Any], config: DecodeConfig) -> None:
    """Let each component refuse ``config`` before any forward, through its optional ``check_config(config)``
    (a filter trained on another block length, say): a ``ValueError`` there names the component's rule."""
    for component in components:
        check = getattr(component, "check_config", None)
        if callable(check):
            check(config)


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
    :class:`Decoding` for each step's view after its commits; between steps, ``retire(rows)`` finishes rows;
    ``result`` holds the :class:`DecodeResult` once the iteration ends (``run()`` finishes it)."""
    return Decoding(model, input_ids, arguments)


class Decoding:
    """A decode in progress. Each step runs in ``torch.inference_mode`` when the iteration asks for it; the
    caller's code between steps runs outside it. Views are the engine's own: read them, do not change them."""

    def __init__(self, model: DenoiserModel, input_ids: Any, arguments: dict[str, Any]) -> None:
        self._retired = _Retired()
        self._steps = _steps(model, input_ids, retired=self._retired, **arguments)
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
        self._retired.add(rows)

    def run(self) -> DecodeResult:
        """Decode the remaining steps; the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class _Retired:
    """Rows a caller finished between steps, by index into the caller's batch; a block-causal model's batches
    of rows read their own (``rows``: which of the caller's rows a batch holds)."""

    def __init__(self) -> None:
        self.indices: set[int] = set()

    def add(self, rows: torch.Tensor | Sequence[int]) -> None:
        rows = torch.as_tensor(rows)
        self.indices |= set((rows.nonzero().flatten() if rows.dtype == torch.bool else rows.flatten()).tolist())

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        if not self.indices:
            return torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
        return torch.tensor([int(row) in self.indices for row in rows.tolist()], dtype=torch.bool,
                            device=rows.device)


def _steps(
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
    retired: _Retired,
    rows: torch.Tensor | None = None,
    **settings: Any,
) -> Generator[StepView, None, DecodeResult]:
    """The loop: yields each step's view after its commits, returns the result. ``rows``: which rows of the
    caller's batch these are (a block-causal model's batches of one prompt length modulo its block)."""
    if config is None:
        config = DecodeConfig(**settings)
    elif settings:
        raise TypeError(f"pass either config or settings, not both (got settings {sorted(settings)})")
    info = ModelInfo.of(model, config)
    mask_id, eos_id, block_size = info.mask_token_id, info.eos_token_id, info.block_size
    input_ids, prompt_mask = _prompt_tensors(input_ids, attention_mask, eos_id)
    _check_prompts(input_ids, prompt_mask, info, config.gen_length)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device) if rows is None else rows
    if cache is None:
        cache = info.own_cache
    if block_size and ((input_ids.shape[1] - prompt_mask.sum(1)) % block_size).any():
        # Blocks count from position 0: the canvas's columns must agree with positions modulo the block
        # size, so rows whose prompt lengths differ modulo it decode as batches of their own (left-padded
        # to their longest prompt), and the results join. ``on_step`` sees each batch's views.
        residues = prompt_mask.sum(1) % block_size
        groups = [(residues == r).nonzero().flatten() for r in sorted(set(residues.tolist()))]
        results = []
        for group in groups:
            ids, mask = pad_prompts([input_ids[i][prompt_mask[i].bool()].tolist() for i in group], eos_id)
            parts = {name: _for_rows(component, group) for name, component in
                     (("policy", policy), ("stop", stop), ("cache", cache), ("constraint", constraint))}
            results.append((yield from _steps(model, ids.to(input_ids.device), attention_mask=mask.to(input_ids.device),
                                              config=config, **parts, tokenizer=tokenizer, on_step=on_step,
                                              retired=retired, rows=rows[group])))
        return _joined(results, groups)
    unmask_policy = create("policies", policy)
    if isinstance(stop, (list, tuple)) and not (len(stop) == 2 and isinstance(stop[1], dict)):
        stop = ("any", {"stops": stop})
    stop_criterion = create("stops", "none" if stop is None else stop)
    cache_manager = create("caches", cache)
    constrainer = None if constraint is None else create("constraints", constraint)
    check_config((unmask_policy, stop_criterion, cache_manager, constrainer), config)
    if constrainer is not None:
        if tokenizer is None:
            raise ValueError("constraint: pass tokenizer= too; a constraint reads the text of each token")
        constrainer.prepare(vocabulary_of(tokenizer, model.vocab_size, eos_id, mask_id), input_ids.shape[1])
        constraint_name = describe("constraints", constrainer)["name"]
    observers = plugin_manager().hook.unmask_on_step
    notify = bool(observers.get_hookimpls())

    started = time.perf_counter()
    device = input_ids.device
    batch, gen_start = input_ids.shape
    # A block-causal model decodes whole blocks (as SDAR's and LLaDA 2.0's loops do): the canvas runs to
    # the end of the block holding the answer's last position, and the answer is cut to gen_length after.
    length = config.gen_length
    if block_size is not None:
        length = _whole_blocks(gen_start + length, block_size) - gen_start
    width = gen_start + length
    canvas = _Canvas(
        x=torch.cat([input_ids, input_ids.new_full((batch, length), mask_id)], dim=1),
        row_end=torch.full((batch,), width, device=device),
        commit_step=torch.full((batch, length), -1, dtype=torch.long, device=device),
        gen_start=gen_start, mask_id=mask_id, eos_id=eos_id,
    )
    real = torch.cat([prompt_mask, prompt_mask.new_ones((batch, length))], dim=1)  # (B, L)
    columns = torch.arange(width, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    nfe = torch.zeros(batch, dtype=torch.long, device=device)
    candidate_rows = torch.zeros(batch, dtype=torch.long, device=device)
    reach_canvas = getattr(unmask_policy, "reach", "block") == "canvas"
    reuse: Reuse | None = None  # logits of a committed candidate, for the next step
    generator = torch.Generator(device=device).manual_seed(config.seed)
    cache_manager.reset(model)
    global_step = 0
    lookbehind = int(info.shift_logits)

    blocks = block_columns(gen_start, length, config.num_block_tokens, aligned=block_size is not None)
    total_steps = len(blocks) * config.steps_per_block
    finish_block = getattr(cache_manager, "finish_block", None)

    def canvas_state(x: torch.Tensor, block: tuple[int, int], step: int, extra: int = 0) -> CanvasState:
        """Columns past a row's end are hidden from it; a block-causal model needs none after its model
        block (``extra`` more: a shifted model's prediction of the next block's first token)."""
        visible = int(canvas.row_end.max())
        if block_size is not None:
            visible = min(visible, _whole_blocks(block[1], block_size) + extra)
        attention = real[:, :visible] * (columns[None, :visible] < canvas.row_end[:, None])
        return CanvasState(
            input_ids=x[:, :visible], attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
            block_start=block[0], block_end=block[1], step=step, lookbehind=lookbehind,
        )

    for block_index, (block_start, block_end) in enumerate(blocks):
        # A shifted block-causal model (Fast-dLLM v2) predicts a block's first token from the previous
        # block's last position, outside the block's own forwards: it is committed first, by argmax.
        seeded = bool(lookbehind) and block_size is not None and block_start % block_size == 0
        # Once a model block is finished, the cache's forward on it (an exact cache stores its keys and
        # values), for the rows that have a part of it (EoTP may have cut a row before it).
        seed_logits: tuple[torch.Tensor, int] | None = None  # (logits, their first column)
        if block_index and callable(finish_block):
            finished = blocks[block_index - 1]
            storing = ~done & (canvas.row_end > finished[0])
            if storing.any() and (block_size is None or finished[1] % block_size == 0):
                state = canvas_state(canvas.x, finished, 0, extra=lookbehind if seeded else 0)
                plan = finish_block(state)
                if plan is not None:
                    logits = _forward(model, canvas.x, state, plan, storing, max(mask_id, eos_id), global_step)
                    nfe += storing.long()
                    seed_logits = (logits, plan.start) if seeded and plan.end > block_start else None
        seed_rows = None
        if seeded:
            seed_rows = ~done & (canvas.row_end > block_start) & (canvas.x[:, block_start] == mask_id)
        if seed_rows is not None and seed_rows.any():
            if seed_logits is None:  # no finishing forward reached the block's first column: one forward
                state = canvas_state(canvas.x, (block_start, block_end), 0)
                plan = cache_manager.plan(state)
                seed_logits = (_forward(model, canvas.x, state, plan, seed_rows, max(mask_id, eos_id),
                                        global_step), plan.start)
                nfe += seed_rows.long()
            logits, offset = seed_logits
            first, _ = predict(logits[:, block_start - offset][:, None], config.temperature, generator, mask_id)
            seed = torch.zeros_like(canvas.x, dtype=torch.bool)
            seed[:, block_start] = seed_rows
            canvas.apply(Commit(mask=seed, tokens=first[:, :1].expand_as(canvas.x)), global_step)
        window = (columns >= block_start) & (columns < block_end)
        window = window[None, :].expand(batch, width)
        schedule = linear_schedule((canvas.x[:, block_start:block_end] == mask_id).sum(1), config.steps_per_block)
        step = 0
        while True:
            # Which rows still decode this block.
            x = canvas.x
            masked = x == mask_id
            row_active = ~done & (masked & window).any(1)
            if not row_active.any():
                break

            # Forward what the cache plans (or take a committed candidate's logits).
            state = canvas_state(x, (block_start, block_end), step)
            plan = cache_manager.plan(state)
            # Rows whose canvas is a candidate scored last step take its logits and count no forward.
            reused = reuse.rows(plan, x) if reuse is not None else torch.zeros_like(row_active)
            fed = row_active & ~reused
            if reuse is not None and not fed.any():
                logits = reuse.logits
            else:
                logits = _forward(model, x, state, plan, fed, max(mask_id, eos_id), global_step)
                nfe += fed.long()
                if reuse is not None and reused.any():
                    logits = torch.where(reused[:, None, None], reuse.logits, logits)
            # Rows neither fed nor reused (done, or through with the block) have no predictions this step.
            scored_rows = row_active | reused
            scorer = CandidateScorer(
                model=model, cache_manager=cache_manager,
                next_state=lambda x: canvas_state(x, (block_start, block_end), step + 1), x=x,
                row_active=row_active, nfe=nfe, candidate_rows=candidate_rows, temperature=config.temperature,
                generator=generator, mask_id=mask_id, largest_id=max(mask_id, eos_id), global_step=global_step,
            )

            def score(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                """x0 and its probability at masked positions of the fed span."""
                return on_canvas(x, masked & scored_rows[:, None], plan.start,
                                 *predict(logits, config.temperature, generator, mask_id))

            def step_view(x0: torch.Tensor, confidence: torch.Tensor) -> StepView:
                return StepView(
                    x=x, x0=x0, confidence=confidence, masked=masked, window=window, row_active=row_active,
                    # Past the schedule's last step (a policy that committed less), one token per step.
                    schedule_k=schedule[:, step] if step < config.steps_per_block else torch.ones_like(nfe),
                    nfe=nfe.clone(), logits=_block_logits(logits, plan.start, block_start, block_end),
                    generator=generator, gen_start=gen_start, block_start=block_start, block_end=block_end,
                    block_index=block_index, step=step, mask_token_id=mask_id, eos_token_id=eos_id,
                    global_step=global_step, total_steps=total_steps, span_logits=logits,
                    span_start=plan.start, evaluate=scorer,
                )

            if constrainer is not None:  # tokens it does not allow are banned before scoring, in place
                if reuse is not None and reused.any():
                    logits = logits.clone()  # (reused candidate logits stay as they were scored)
                unscored = step_view(x, torch.zeros(x.shape, dtype=torch.float64))
                restrict(constrainer, unscored, _reach(unscored, reach_canvas), logits, plan.start, constraint_name)
            view = step_view(*score(logits))

            # The policy chooses; the engine checks it and applies the progress floor (and, with a
            # constraint, chooses again while it refuses a commit).
            chosen: list[Commit] = []

            def select(view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
                chosen[:] = [_checked_commit(unmask_policy.select(view), view, config.progress_floor,
                                             logits.shape[-1], reach_canvas, canvas)]
                return chosen[0].mask, chosen[0].tokens

            if constrainer is None:
                commit, tokens = select(view)
            else:
                def score_at(rows: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    """x0 and its probability at these canvas positions (masked, in the fed span)."""
                    x0, confidence = predict(logits[rows, columns - plan.start][None], config.temperature,
                                             generator, mask_id)
                    return x0[0], confidence[0]

                commit, tokens, view = choose(constrainer, view, select, logits, plan.start, score_at,
                                              constraint_name, lambda view: _reach(view, reach_canvas))
            decision = attrs.evolve(chosen[0], mask=commit, tokens=tokens)  # (a constraint's refusals left out)
            canvas.apply(decision, global_step)
            ends = None
            if constrainer is not None and (commit & (tokens == eos_id)).any():
                # An answer the constraint has ended at an EOS: the rest of the row is EOS, now.
                ends = forced_ends(constrainer, attrs.evolve(view, x=canvas.x, masked=canvas.x == mask_id))
                if (ends >= 0).any():
                    canvas.cut(ends, global_step)
            if decision.evaluated is not None:
                # Rows whose canvas is no longer what the policy decided (a constraint refused or cut) reuse nothing.
                as_decided = (commit == chosen[0].mask).all(1) & ((tokens == chosen[0].tokens) | ~commit).all(1)
                if ends is not None:
                    as_decided &= ends < 0
                reuse = scorer.reuse(torch.where(as_decided, decision.evaluated, -1), canvas.x, reuse)

            # Stop criteria: finished rows, and EoTP's cut after the answer's end.
            view = attrs.evolve(view, x=canvas.x, committed=commit, remasked=decision.remask,
                                edited=decision.edit, nfe=nfe.clone(), evaluate=None)
            decision = stop_criterion.check(view)
            if decision.end is not None and (decision.end >= 0).any():
                canvas.cut(decision.end, global_step)
            newly_done = (decision.done | retired.rows(rows)) & ~done
            if newly_done.any():
                canvas.finalise(view.x0, newly_done, global_step)
                done |= newly_done
            if on_step is not None:
                on_step(view)
            if notify:
                observers(view=view)
            yield view
            step += 1
            global_step += 1

    tokens = canvas.x[:, gen_start:gen_start + config.gen_length]
    is_eos = tokens == eos_id
    answer_lengths = torch.where(is_eos.any(1), is_eos.long().argmax(1), torch.full_like(nfe, config.gen_length))
    components = {
        "policy": describe("policies", unmask_policy),
        "stop": describe("stops", stop_criterion),
        "cache": describe("caches", cache_manager),
    }
    if constrainer is not None:
        components["constraint"] = describe("constraints", constrainer)
    return DecodeResult(
        tokens=tokens, answer_lengths=answer_lengths, nfe=nfe, commit_step=canvas.commit_step[:, :config.gen_length],
        wall_s=time.perf_counter() - started, config=config, components=components, candidate_rows=candidate_rows,
    )


def block_columns(gen_start: int, gen_length: int, size: int, *, aligned: bool = False) -> list[tuple[int, int]]:
    """The blocks' columns ``[start, end)``: from the first answer column on, or with ``aligned`` at multiples
    of ``size`` (block-causal models count blocks from position 0; the engine lays the canvas out so that
    columns and positions agree modulo the block size), the first and last blocks then partial."""
    end = gen_start + gen_length
    edges = [gen_start, *range((gen_start // size + 1) * size if aligned else gen_start + size, end, size), end]
    return list(zip(edges[:-1], edges[1:]))


def own_cache(model: Any) -> str:
    """The cache a model decodes with by default: the exact cache of finished blocks where attention is
    block-causal and the model takes a KV cache, else none."""
    return ModelInfo.of(model).own_cache


def model_block_size(model: Any, config: DecodeConfig) -> int | None:
    """A block-causal model's block size (its ``block_size`` attribute): the decode's blocks are it or
    sub-blocks of it."""
    return ModelInfo.of(model, config).block_size


def _for_rows(component: Any, rows: torch.Tensor) -> Any:
    """The component for a batch of ``rows`` of the caller's batch: one that holds data per row (an oracle's
    reference tokens) gives it through ``select_rows(index)``; specs and other components serve any rows."""
    select = getattr(component, "select_rows", None)
    return select(rows) if callable(select) and not isinstance(component, (str, tuple, list, dict)) else component


def _joined(results: Sequence[DecodeResult], groups: Sequence[torch.Tensor]) -> DecodeResult:
    """One result of rows decoded in groups (``groups[g]``: the batch rows of ``results[g]``)."""
    order = torch.cat(list(groups)).argsort()

    def join(name: str) -> torch.Tensor:
        return torch.cat([getattr(result, name) for result in results])[order]

    candidate_rows = None if results[0].candidate_rows is None else join("candidate_rows")
    return attrs.evolve(results[0], tokens=join("tokens"), answer_lengths=join("answer_lengths"), nfe=join("nfe"),
                        commit_step=join("commit_step"), candidate_rows=candidate_rows,
                        wall_s=sum(result.wall_s for result in results))


def _whole_blocks(columns: int, block_size: int) -> int:
    """``columns`` rounded up to a multiple of ``block_size``: a block-causal canvas ends with a whole block."""
    return -(-columns // block_size) * block_size


def _check_prompts(input_ids: torch.Tensor, prompt_mask: torch.Tensor, info: ModelInfo, gen_length: int) -> None:
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
    longest, block_size = int(lengths.max()), info.block_size
    width = longest + gen_length if block_size is None else _whole_blocks(longest + gen_length, block_size)
    if info.max_positions is not None and width > info.max_positions:
        blocks = "" if block_size is None else f", rounded up to whole blocks of {block_size},"
        raise ValueError(f"input_ids: the longest prompt ({longest} tokens) plus gen_length={gen_length}{blocks} "
                         f"exceeds the model's {info.max_positions} positions")


def _prompt_tensors(
    input_ids: torch.Tensor | Sequence[Sequence[int]], attention_mask: torch.Tensor | None, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
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


def _forward(model: DenoiserModel, x: torch.Tensor, state: CanvasState, plan: ForwardPlan, rows: torch.Tensor,
             largest_id: int, step: int) -> torch.Tensor:
    """The plan's forward, (B, end - start, V) logits, computed for ``rows`` (B,) bool only where it can be: the
    other rows (done, through with the block, or reusing a candidate's logits) get zeros instead of a share
    of the forward. All rows are fed when the forward fills a cache (later steps read every row of it) or
    its cache has no ``select_rows(index)``; a row's logits never depend on the other rows fed beside it."""
    span, cache = slice(plan.start, plan.end), plan.past_key_values
    compact = not bool(rows.all()) and not plan.fills_cache and (
        cache is None or callable(getattr(cache, "select_rows", None)))
    index: Any = rows.nonzero().flatten() if compact else slice(None)
    fed = x[index, span]
    logits = model(
        fed, position_ids=state.position_ids[index, span], attention_mask=plan.attention_mask[index],
        past_key_values=cache.select_rows(index) if compact and cache is not None else cache,
    )  # (fed rows, end - start, V)
    check_logits(logits, (fed.shape[0], fed.shape[1]), largest_id, step)
    if not compact:
        return logits
    full = logits.new_zeros((x.shape[0], *logits.shape[1:]))
    full[index] = logits
    return full


def _block_logits(logits: torch.Tensor, start: int, block_start: int, block_end: int) -> torch.Tensor:
    """The block's slice of the span's logits; a block cut short by EoTP gives fewer columns."""
    if block_start < start or block_start >= start + logits.shape[1]:
        raise RuntimeError(f"the forward covered columns from {start} but the block starts at {block_start}")
    return logits[:, block_start - start:block_end - start]


def _reach(view: StepView, reach_canvas: bool) -> torch.Tensor:
    """(B, L) bool: the positions a policy may commit: the candidates (masked, in the block, row active), or
    for a policy that declares reach = "canvas" any masked answer position of an active row."""
    if not reach_canvas:
        return view.candidates
    allowed = view.masked & view.row_active[:, None]
    allowed[:, :view.gen_start] = False
    return allowed


def _checked_commit(decision: Any, view: StepView, progress_floor: bool, vocab_size: int, reach_canvas: bool,
                    canvas: _Canvas) -> Commit:
    """The policy's decision held to the rules: fills only where it may reach (masked positions of the block,
    or of the answer for reach "canvas"), re-masks and edits only committed positions there, writes no mask
    token and no id outside the vocabulary; an active row that fills nothing fills its most confident
    position (the progress floor); re-masks of a position that used up its ``REMASKS_PER_POSITION`` are
    dropped, which keeps the loop bounded."""
    if not isinstance(decision, Commit):
        raise TypeError(f"a policy's select must return a Commit (or be adapted by unmask.create), got "
                        f"{type(decision).__name__}")
    shape = tuple(view.x.shape)
    commit, tokens = decision.mask, decision.tokens
    _check_mask(commit, shape, "a policy must return a bool tensor")
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tuple(tokens.shape) != shape:
        got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"Commit.tokens must be a long tensor of shape {shape}, got {got}")
    written = commit
    if decision.edit is not None:
        _check_mask(decision.edit, shape, "Commit.edit must be None or a bool tensor")
        written = commit | decision.edit
    chosen = tokens[written]
    if ((chosen < 0) | (chosen >= vocab_size)).any():
        raise ValueError(f"Commit.tokens holds ids outside the vocabulary [0, {vocab_size})")
    if (commit & ~_reach(view, reach_canvas)).any():
        where = "masked answer positions" if reach_canvas else "masked positions of the current block"
        raise ValueError(f"the policy committed positions that are not {where}")
    if (written & (tokens == view.mask_token_id)).any():
        raise ValueError("the policy committed the mask token, which would leave the position masked; "
                         "return positions to the mask with Commit.remask")
    remask = _checked_revisions(decision, view, reach_canvas, canvas) if (
        decision.remask is not None or decision.edit is not None) else None
    stalled = view.row_active & ~commit.any(1)
    if stalled.any():
        if not progress_floor:
            raise RuntimeError(f"the policy committed nothing for active rows {stalled.nonzero().flatten().tolist()}")
        # Among the candidates even where every confidence is -inf, so the floor never picks another column.
        best = torch.where(view.candidates, view.candidate_confidence.clamp(min=-1.0), float("-inf")).argmax(1)
        floor = torch.zeros_like(commit)
        floor[stalled, best[stalled]] = True
        commit, tokens = commit | floor, torch.where(floor, view.x0, tokens)
    edit = decision.edit if decision.edit is not None and decision.edit.any() else None
    return attrs.evolve(decision, mask=commit, tokens=tokens, remask=remask, edit=edit)


def _checked_revisions(decision: Commit, view: StepView, reach_canvas: bool, canvas: _Canvas) -> torch.Tensor | None:
    """A decision's re-masks and edits held to their rules (only for a decision that has any: the check costs a
    step's worth of masks); the re-masks the engine applies, those past a position's budget dropped."""
    shape = tuple(view.x.shape)
    edit = decision.edit if decision.edit is not None else torch.zeros_like(decision.mask)
    if (edit & ~_committed(view, reach_canvas, canvas.row_end)).any():
        raise ValueError("Commit.edit may name only committed answer positions of active rows within the "
                         f"policy's reach ({'the answer' if reach_canvas else 'the current block'})")
    if decision.remask is None:
        return None
    _check_mask(decision.remask, shape, "Commit.remask must be None or a bool tensor")
    if (decision.remask & ~_committed(view, False, canvas.row_end)).any():  # a later block would leave it masked
        raise ValueError("Commit.remask may name only committed positions of the current block of active rows")
    if (decision.remask & edit).any():
        raise ValueError("Commit.remask and Commit.edit name the same position: re-mask it or edit it")
    remask = decision.remask & (canvas.remasks < REMASKS_PER_POSITION)
    return remask if remask.any() else None


def _check_mask(mask: Any, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{what} of shape {shape}, got {got}")


def _committed(view: StepView, reach_canvas: bool, row_end: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: committed answer positions of active rows, before each row's end, within the block (the
    answer for reach "canvas")."""
    columns = torch.arange(view.x.shape[1], device=view.x.device)[None, :]
    area = (columns >= view.gen_start) if reach_canvas else view.window
    return area & ~view.masked & view.row_active[:, None] & (columns < row_end[:, None])


@attrs.define
class _Canvas:
    """The decode's changing state: the canvas, where each row's canvas ends, when each position was committed."""

    x: torch.Tensor  # (B, L): prompts, then the answer canvas
    row_end: torch.Tensor  # (B,) exclusive; EoTP moves it left, and later columns are hidden from the row
    commit_step: torch.Tensor  # (B, gen_length): the global step that committed each position, -1 before
    gen_start: int
    mask_id: int
    eos_id: int
    # (B, L) long: how often each position returned to the mask
    remasks: torch.Tensor = attrs.field(default=attrs.Factory(lambda self: torch.zeros_like(self.x), takes_self=True))

    def apply(self, decision: Commit, step: int) -> None:
        """Write a checked decision: fills and edits take their tokens, re-masked positions the mask again."""
        written = decision.mask if decision.edit is None else decision.mask | decision.edit
        self.x = torch.where(written, decision.tokens, self.x)
        self.commit_step[written[:, self.gen_start:]] = step
        if decision.remask is not None:
            self.x = self.x.masked_fill(decision.remask, self.mask_id)
            self.commit_step[decision.remask[:, self.gen_start:]] = -1
            self.remasks += decision.remask.long()

    def cut(self, end: torch.Tensor, step: int) -> None:
        """Fill each row with EOS from ``end`` (B,; -1: no cut) on and hide the columns after it."""
        columns = torch.arange(self.x.shape[1], device=self.x.device)[None, :]
        cut = (end[:, None] >= 0) & (columns > end[:, None]) & (columns < self.row_end[:, None])
        if ((self.x != self.mask_id) & (self.x != self.eos_id) & cut).any():
            raise ValueError("a stop criterion cut the canvas before an already committed token")
        # The end position itself holds EOS too (EoTP predicted it there).
        at_end = (end[:, None] >= self.gen_start) & (columns == end[:, None]) & (self.x == self.mask_id)
        self.x = self.x.masked_fill(cut | at_end, self.eos_id)
        self.commit_step[cut[:, self.gen_start:]] = -1
        self.commit_step[at_end[:, self.gen_start:]] = step
        self.row_end = torch.where(end >= 0, torch.minimum(self.row_end, end + 1), self.row_end)

    def finalise(self, x0: torch.Tensor, rows: torch.Tensor, step: int) -> None:
        """Rows a stop criterion finished keep their latest predictions where masks remain (EOS if none)."""
        remaining = (self.x == self.mask_id) & rows[:, None]
        remaining[:, :self.gen_start] = False
        fill = torch.where(x0 == self.mask_id, torch.full_like(x0, self.eos_id), x0)
        self.commit_step[remaining[:, self.gen_start:]] = step
        self.x = torch.where(remaining, fill, self.x)
