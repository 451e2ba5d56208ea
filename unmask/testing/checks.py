"""Contract checks every component passes, built-in or third-party (like scikit-learn's check_estimator).

Each ``check_*`` takes a registered name, a spec string or an instance and raises ``AssertionError`` on
the first broken rule. Components whose registration gives an ``example`` are built with it, per batch.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import torch
from hypothesis import HealthCheck, given, settings

from unmask.core.engine import check_config, decode, model_block_size, pad_prompts
from unmask.core.canvas import reach as reach_of
from unmask.core.plugins import ROLES, registry
from unmask.core.spec import parse_spec
from unmask.core.types import Commit, DecodeConfig, StepView, StopDecision
from unmask.testing.fake_model import FakeDenoiser, FakeTokenizer
from unmask.testing.generators import committed_views, step_views

__all__ = ["check_unmask_policy", "check_stop_criterion", "check_cache_manager", "check_constraint", "build_component"]

PROMPTS = ([1, 2, 3], [4], [5, 6, 7, 8, 9])
CONFIGS = (
    DecodeConfig(gen_length=16, block_length=8),  # one token per step
    DecodeConfig(gen_length=16, block_length=4, steps=8),  # two per step
    DecodeConfig(gen_length=12, block_length=4, steps=6, temperature=0.8, seed=3),
)


def build_component(
    kind: str, spec: Any, *, rows: Sequence[int], gen_length: int, vocab_size: int, mask_token_id: int
) -> Any:
    """An instance for a decode of ``rows`` (row identities): the entry's example where it has one, as the
    engine would use it (a policy that returns a mask adapted to return a ``Commit``)."""
    if isinstance(spec, str):
        name, params = parse_spec(spec)
        if "+" not in spec and not params:
            entry = registry().get(kind, name)
            if entry.example is not None:
                spec = entry.example(
                    rows=list(rows), gen_length=gen_length, vocab_size=vocab_size, mask_token_id=mask_token_id
                )
    return registry().create(kind, spec)


def check_unmask_policy(policy: Any, *, max_examples: int = 40) -> None:
    """Commits are a bool (B, L) mask inside masked ∩ block of active rows (masked answer positions of
    active rows for a policy whose ``reach`` is "canvas"); inputs are not mutated; the
    same view gives the same commits; decodes keep committed tokens, progress and are deterministic."""

    def make(rows: Sequence[int], gen_length: int, vocab: int, mask_id: int) -> Any:
        return build_component(
            "policies", policy, rows=rows, gen_length=gen_length, vocab_size=vocab, mask_token_id=mask_id
        )

    @settings(max_examples=max_examples, deadline=None, report_multiple_bugs=False,
              suppress_health_check=[HealthCheck.too_slow])
    @given(view=step_views())
    def on_views(view: StepView) -> None:
        component = make(*_view_context(view))
        first = _unchanged(attrs.evolve(view, generator=torch.Generator().manual_seed(7)), component.select)
        second = component.select(attrs.evolve(view, generator=torch.Generator().manual_seed(7)))
        mask = _commit_mask(first, view)
        assert not (mask & ~_allowed(view, _reach(component))).any(), \
            f"committed outside masked ∩ {_reach(component)} ∩ active rows"
        assert torch.equal(mask, _commit_mask(second, view)), "the same view gave different commits"

    on_views()
    _check_decodes(lambda *context: {"policy": make(*context)}, stochastic=bool(make([0], 8, 16, 0).stochastic))


def check_stop_criterion(stop: Any, *, max_examples: int = 40) -> None:
    """Decisions have shape (B,); an end never cuts a committed non-EOS token; inputs are not mutated;
    decisions are deterministic and monotone (a finished row stays finished) over a decode."""

    def make(rows: Sequence[int], gen_length: int, vocab: int, mask_id: int) -> Any:
        return build_component("stops", stop, rows=rows, gen_length=gen_length, vocab_size=vocab, mask_token_id=mask_id)

    @settings(max_examples=max_examples, deadline=None, report_multiple_bugs=False,
              suppress_health_check=[HealthCheck.too_slow])
    @given(view=committed_views())
    def on_views(view: StepView) -> None:
        component = make(*_view_context(view))
        decision = _unchanged(view, component.check)
        _check_decision(decision, view)
        again = component.check(view)
        assert torch.equal(decision.done, again.done), "the same view gave different done flags"
        assert (decision.end is None) == (again.end is None), "the same view gave different ends"
        assert decision.end is None or torch.equal(decision.end, again.end), "the same view gave different ends"
        later = component.check(attrs.evolve(view, nfe=view.nfe + 1))
        assert not (decision.done & ~later.done).any(), "a row finished at one step was unfinished at a later one"

    on_views()

    def components(*context: Any) -> dict[str, Any]:
        return {"stop": _MonotoneWatch(make(*context))}

    _check_decodes(components, stochastic=False)


def check_cache_manager(cache: Any, *, models: Sequence[Any]) -> None:
    """Plans feed a span that covers the block with a matching attention mask; decodes with the cache
    keep committed tokens, progress, are deterministic and leave no mask.

    ``models`` are denoisers that take KV caches, for example
    ``[tiny_denoiser("llama"), tiny_denoiser("qwen2")]`` from :mod:`unmask.contrib.models.tiny` (a
    random Llama, and a Qwen2 that shifts its logits as Dream does), and block-causal ones
    (``tiny_denoiser("llama", block_size=4)``); each is checked with the caches and configs it serves.
    """

    def components(rows: Sequence[int], gen: int, vocab: int, mask_id: int) -> dict[str, Any]:
        made = build_component("caches", cache, rows=rows, gen_length=gen, vocab_size=vocab, mask_token_id=mask_id)
        return {"cache": _PlanWatch(made), "policy": "threshold:tau=0.5", "stop": "eotp"}

    if not models:
        raise ValueError("models must name at least one denoiser that takes KV caches")
    _check_decodes(components, stochastic=False, models=models)


def check_constraint(constraint: Any, *, policies: Sequence[str] = ("topk", "topk:k=3", "threshold:tau=0.5")) -> None:
    """Decodes under the constraint (with each of ``policies``, on :class:`FakeDenoiser` and the text of
    :class:`FakeTokenizer`) keep committed tokens, progress, stay inside masked ∩ block, are deterministic
    and the same alone as in a batch; ``allowed`` gives (N, V) bool; ``refuse`` leaves a row's first commit."""

    def components(policy: str) -> Callable[..., dict[str, Any]]:
        def make(rows: Sequence[int], gen: int, vocab: int, mask_id: int) -> dict[str, Any]:
            made = build_component("constraints", constraint, rows=rows, gen_length=gen, vocab_size=vocab,
                                   mask_token_id=mask_id)
            return {"constraint": _RefusalWatch(made), "tokenizer": FakeTokenizer(vocab), "policy": policy}
        return make

    for policy in policies:
        _check_decodes(components(policy), stochastic=False)


class _RefusalWatch:
    """A constraint whose answers are checked: shapes, and never all of a row's commits refused."""

    def __init__(self, constraint: Any) -> None:
        self.constraint = constraint

    def prepare(self, vocabulary: Any, gen_start: int) -> None:
        self.size = len(vocabulary.strings)
        self.constraint.prepare(vocabulary, gen_start)

    def allowed(self, view: StepView, positions: torch.Tensor) -> torch.Tensor:
        allowed = _unchanged(view, lambda v: self.constraint.allowed(v, positions))
        assert isinstance(allowed, torch.Tensor) and allowed.dtype == torch.bool, "allowed() must give a bool tensor"
        assert allowed.shape == (len(positions), self.size), f"allowed() gave {tuple(allowed.shape)} for N, V = " \
            f"{len(positions)}, {self.size}"
        return allowed

    def refuse(self, view: StepView, commit: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        refused = _unchanged(view, lambda v: self.constraint.refuse(v, commit, tokens))
        assert refused.shape == commit.shape and refused.dtype == torch.bool, "refuse() must give a (B, L) bool"
        assert not ((commit & ~refused).sum(1) == 0)[commit.any(1)].any(), "refuse() refused all of a row's commits"
        return refused


def _check_decodes(
    components: Callable[..., dict[str, Any]], *, stochastic: bool, models: Sequence[Any] | None = None
) -> None:
    """``components(rows, gen_length, vocab_size, mask_token_id)`` gives the decode's components."""
    # The second fake model predicts EOS late in the canvas, so EoTP cuts happen.
    served = 0
    for model in models or (FakeDenoiser(), FakeDenoiser(seed=1, eos_bias=4.0, eos_from=9)):
        for config in CONFIGS:
            context = (config.gen_length, model.vocab_size, model.mask_token_id)
            rows = range(len(PROMPTS))
            if not _serves(components(rows, *context), config, model):
                continue  # a config the component refuses up front (check_config), e.g. sampling for a greedy method
            served += 1
            first = _watched_decode(model, PROMPTS, config, components(rows, *context))
            second = decode(model, list(PROMPTS), config=config, **components(rows, *context))
            assert torch.equal(first.tokens, second.tokens), f"same seed, different tokens ({config})"
            assert torch.equal(first.nfe, second.nfe), f"same seed, different NFE ({config})"
            assert not (first.tokens == model.mask_token_id).any(), f"masks left after decoding ({config})"
            if stochastic or config.temperature > 0:
                continue  # a shared random stream makes rows depend on their batch
            for row, prompt in enumerate(PROMPTS):
                alone = decode(model, [prompt], config=config, **components([row], *context))
                assert torch.equal(alone.tokens[0], first.tokens[row]), f"row {row} decodes differently in a batch"
                assert alone.nfe[0] == first.nfe[row], f"row {row} takes different NFE in a batch"
    assert served, "the components refused every configuration of the checks"


def _serves(components: dict[str, Any], config: DecodeConfig, model: Any) -> bool:
    """Whether the components accept ``config`` (their optional ``check_config``) and the model (a cache's
    ``reset(model)``: the exact cache serves block-causal models only, prefix and dual the others), and
    whether a block-causal model decodes blocks of this length."""
    made = {key: registry().create(ROLES[key], spec) for key, spec in components.items() if key in ROLES}
    try:
        model_block_size(model, config)  # a block-causal model refuses blocks that do not divide its own
        check_config(list(made.values()), config)
        if "cache" in made:
            made["cache"].reset(model)
    except ValueError:
        return False
    return True


def _watched_decode(model: Any, prompts: Sequence[Sequence[int]], config: DecodeConfig, components: dict) -> Any:
    ids, mask = pad_prompts(prompts, model.eos_token_id)
    ids_before, mask_before = ids.clone(), mask.clone()
    previous: list[torch.Tensor] = []

    reach = _reach(components.get("policy", "topk"))

    def watch(view: StepView) -> None:
        committed = view.committed
        assert not (committed & ~_allowed(view, reach)).any(), f"a commit left masked ∩ {reach}"
        # (an active row with no mask left in its block is in its declared edit-only steps: steps_after_fill)
        filling = view.row_active & (view.masked & view.window).any(1)
        assert committed[filling].any(1).all(), "an active row committed nothing"
        assert not committed[~view.row_active].any(), "an inactive row committed"
        if view.global_step == 0:  # a decode's first step (a block-causal model decodes groups of rows in turn)
            previous.clear()
        if previous:
            kept = previous[-1] != view.mask_token_id
            for declared in (view.remasked, view.edited):  # the only ways a committed token may change
                if declared is not None:
                    kept &= ~declared
            assert torch.equal(view.x[kept], previous[-1][kept]), "a committed token changed undeclared"
        previous[:] = [view.x.clone()]

    result = decode(model, ids, attention_mask=mask, config=config, on_step=watch, **components)
    assert torch.equal(ids, ids_before) and torch.equal(mask, mask_before), "decode mutated its inputs"
    return result


def _reach(policy: Any) -> str:
    """Where a policy may commit: its ``reach`` ("block", the default, or "canvas": any masked answer position)."""
    return str(registry().create("policies", policy).reach)


def _allowed(view: StepView, where: str) -> torch.Tensor:
    return reach_of(view, where == "canvas")  # the engine's own rule


def _view_context(view: StepView) -> tuple[range, int, int, int]:
    return range(view.x.shape[0]), view.x.shape[1] - view.gen_start, view.logits.shape[-1], view.mask_token_id


def _unchanged(view: StepView, call: Callable[[StepView], Any]) -> Any:
    tensors = {a.name: getattr(view, a.name) for a in attrs.fields(StepView)}
    before = {k: v.clone() for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    result = call(view)
    for name, value in before.items():
        assert torch.equal(value, getattr(view, name)), f"the component mutated view.{name}"
    return result


def _commit_mask(decision: Any, view: StepView) -> torch.Tensor:
    assert isinstance(decision, Commit), f"select must return a Commit, got {type(decision).__name__}"
    mask = decision.mask
    assert isinstance(mask, torch.Tensor), f"Commit.mask must be a tensor, got {type(mask).__name__}"
    assert mask.dtype == torch.bool, f"commit mask must be bool, got {mask.dtype}"
    assert mask.shape == view.x.shape, f"commit mask shape {tuple(mask.shape)} != canvas {tuple(view.x.shape)}"
    assert decision.tokens.shape == view.x.shape, "Commit.tokens must have the canvas shape"
    assert not (mask & (decision.tokens == view.mask_token_id)).any(), "a Commit wrote the mask token"
    for name in ("remask", "edit"):
        revised = getattr(decision, name)
        if revised is not None:
            assert revised.dtype == torch.bool and revised.shape == view.x.shape, f"Commit.{name}: (B, L) bool"
            assert not (revised & view.masked).any(), f"Commit.{name} names a masked position"
    return mask


def _check_decision(decision: StopDecision, view: StepView) -> None:
    batch, width = view.x.shape
    assert isinstance(decision, StopDecision), f"check must return a StopDecision, got {type(decision).__name__}"
    assert decision.done.dtype == torch.bool and decision.done.shape == (batch,), "done must be a (B,) bool tensor"
    if decision.end is None:
        return
    end = decision.end
    assert end.shape == (batch,) and not end.is_floating_point(), "end must be a (B,) integer tensor"
    cut = end >= 0
    assert ((end[cut] >= view.gen_start) & (end[cut] < width)).all(), "end must be -1 or a generated column"
    columns = torch.arange(width)[None, :]
    after = cut[:, None] & (columns > end[:, None])
    content = (view.x != view.mask_token_id) & (view.x != view.eos_token_id)
    assert not (after & content).any(), "the end cuts before a committed non-EOS token"


@attrs.define
class _MonotoneWatch:
    """Wraps a stop criterion and asserts its done flags never go back to False."""

    inner: Any
    seen: torch.Tensor | None = None

    def check(self, view: StepView) -> StopDecision:
        decision = self.inner.check(view)
        _check_decision(decision, view)
        if self.seen is not None:
            assert not (self.seen & ~decision.done).any(), "a finished row was reported unfinished later"
        self.seen = decision.done.clone()
        return decision


@attrs.define
class _PlanWatch:
    """Wraps a cache manager and checks each plan against the canvas."""

    inner: Any

    def reset(self, model: Any = None) -> None:
        self.inner.reset(model)

    def plan(self, state: Any) -> Any:
        plan = self.inner.plan(state)
        width = state.input_ids.shape[1]
        assert 0 <= plan.start <= state.block_start < plan.end <= width, f"plan span [{plan.start}, {plan.end})"
        assert plan.attention_mask.shape[0] == state.input_ids.shape[0], "plan attention mask has wrong rows"
        assert plan.attention_mask.shape[1] >= plan.end - plan.start, "plan attention mask misses the fed columns"
        return plan
