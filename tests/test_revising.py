"""A policy that revises committed tokens, written here against the public API only: it re-masks and edits
through ``Commit``, passes the shared contract checks, composes with FreeDave under ``+`` without losing its
logits reuse, and every decode ends within the engine's stated bound (hypothesis)."""

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unmask
from unmask.core.engine import REMASKS_PER_POSITION
from unmask.testing import FakeDenoiser, check_unmask_policy


@attrs.frozen
class Reviser:
    """Fills the most confident masked position of the block; replaces committed tokens whose prediction now
    differs (edit); when a row's masks left are a multiple of ``every``, returns its least confident committed
    position to the mask."""

    every: int = 2
    edits: bool = True

    def select(self, view: unmask.StepView) -> unmask.Commit:
        fill = torch.zeros_like(view.masked)
        rows = view.row_active & view.candidates.any(1)
        fill[rows, view.candidate_confidence.argmax(1)[rows]] = True
        start = view.block_start
        width = view.logits.shape[1]  # (a block cut short by EoTP gives fewer columns)
        probabilities = view.logits.float().softmax(-1)
        predicted, own = view.x.clone(), torch.zeros(view.x.shape)
        predicted[:, start:start + width] = probabilities.argmax(-1)
        own[:, start:start + width] = probabilities.gather(-1, view.x[:, start:start + width, None].clamp(
            max=probabilities.shape[-1] - 1))[..., 0]
        committed = ~view.masked & view.window & view.in_answer & view.row_active[:, None] & (view.x != view.eos_token_id)
        committed[:, start + width:] = False
        edit = committed & (predicted != view.x) & (predicted != view.mask_token_id) & self.edits
        remask = torch.zeros_like(committed)
        candidates = committed & ~edit
        weakest = own.masked_fill(~candidates, float("inf")).argmin(1)
        # On a row's own clock (its masks left), so that a row decodes alike alone and in a batch.
        pick = candidates.any(1) & ((view.masked & view.window).sum(1) % self.every == 0)
        remask[pick, weakest[pick]] = True
        return unmask.Commit(mask=fill, tokens=torch.where(edit, predicted, view.x0), remask=remask, edit=edit)


class ReviserPlugin:
    @unmask.hookimpl
    def unmask_register_policies(self, registry):
        registry.add("reviser", Reviser)


@pytest.fixture(scope="module", autouse=True)
def registered():
    plugin = ReviserPlugin()
    unmask.register_plugin(plugin, name="reviser-plugin")
    yield
    unmask.unregister_plugin(plugin)


def test_the_reviser_re_masks_and_edits_and_passes_the_contract_checks():
    revisions = {"remasked": 0, "edited": 0}

    def count(view):
        revisions["remasked"] += int(view.remasked.sum()) if view.remasked is not None else 0
        revisions["edited"] += int(view.edited.sum()) if view.edited is not None else 0

    result = unmask.decode(FakeDenoiser(seed=3), [[1, 2, 3], [4, 5]], gen_length=16, block_length=8,
                           policy="reviser", on_step=count)
    assert revisions["remasked"] > 0 and revisions["edited"] > 0
    assert not (result.tokens == FakeDenoiser().mask_token_id).any()
    check_unmask_policy("reviser", max_examples=10)  # committed tokens change only where declared


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 50), lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       blocks=st.sampled_from([(8, 8), (16, 8), (16, 4)]), every=st.integers(1, 3))
def test_every_decode_ends_within_the_stated_bound(seed, lengths, blocks, every):
    gen_length, block_length = blocks
    prompts = [[2 + (seed + i) % 5] * n for i, n in enumerate(lengths)]
    steps = []
    result = unmask.decode(FakeDenoiser(seed=seed), prompts, gen_length=gen_length, block_length=block_length,
                           policy=Reviser(every=every), on_step=lambda view: steps.append(view.block_index))
    per_block = [steps.count(b) for b in set(steps)]
    assert max(per_block) <= block_length * (1 + REMASKS_PER_POSITION)
    assert not (result.tokens == FakeDenoiser().mask_token_id).any()


def test_a_reviser_composes_with_freedave_and_keeps_its_reuse():
    """Where the reviser asks for nothing beyond FreeDave's draft, the union's decision is FreeDave's and its
    candidate's logits are reused: the same forwards as FreeDave alone, fewer than one token per step."""
    model, prompts = FakeDenoiser(seed=2), [[1, 2, 3], [4, 5], [6]]
    settings = {"gen_length": 16, "block_length": 8}
    alone = unmask.decode(model, prompts, policy="freedave", **settings)
    quiet = unmask.decode(model, prompts, policy=unmask.create("policies", "freedave + reviser:every=1000,edits=false"),
                          **settings)
    vanilla = unmask.decode(model, prompts, policy="topk", **settings)
    assert torch.equal(quiet.nfe, alone.nfe) and (quiet.nfe < vanilla.nfe).all()
    revising = unmask.decode(model, prompts, policy="freedave + reviser:every=1", **settings)
    assert not (revising.tokens == model.mask_token_id).any()
