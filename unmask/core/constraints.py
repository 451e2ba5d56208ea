"""A constraint inside a step (:class:`unmask.core.types.Constraint`): tokens it does not allow are banned
before the policy chooses, commits it refuses are banned after, and the policy chooses again from the same
logits; no forward is added. Without a constraint the engine calls none of this."""

from __future__ import annotations

import weakref
from typing import Any, Callable

import attrs
import torch

from unmask.core.types import Constraint, StepView, Vocabulary

__all__ = ["vocabulary_of", "restrict", "choose", "forced_ends", "MAX_REFUSALS", "REFUSALS_BESIDE"]

MAX_REFUSALS = 10_000  # (position, token) pairs one step may ban after the policy chose
REFUSALS_BESIDE = 256  # refusals beside kept commits after which a position waits for the next step

_VOCABULARIES: "weakref.WeakKeyDictionary[Any, dict[tuple[int, int, int], Vocabulary]]" = weakref.WeakKeyDictionary()


def vocabulary_of(tokenizer: Any, size: int, eos_token_id: int, mask_token_id: int) -> Vocabulary:
    """Each token id's text inside a sentence: decoded after a plain reference token, less the reference's
    own text (so SentencePiece's leading-space marks and byte-level merges read as they do mid-answer).
    Special tokens, ids past the tokenizer and partial UTF-8 sequences give ``""``: no constraint takes them."""
    key = (size, eos_token_id, mask_token_id)
    try:
        cached = _VOCABULARIES.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: computed each time
        cached = {}
    if key not in cached:
        special = set(getattr(tokenizer, "all_special_ids", ())) | {eos_token_id, mask_token_id}
        known = min(size, len(tokenizer))
        reference = next(i for i in range(known) if i not in special and tokenizer.decode([i]).strip())
        prefix = tokenizer.decode([reference])
        texts = tokenizer.batch_decode([[reference, i] for i in range(known)])
        strings = tuple(
            "" if i in special or i >= known or not texts[i].startswith(prefix) or "\ufffd" in texts[i]
            else texts[i][len(prefix):] for i in range(size))
        spaced = next((i for i, text in enumerate(strings) if len(text) > 1 and text.startswith(" ")), None)
        dropped = " " if spaced is not None and tokenizer.decode([spaced]) == strings[spaced][1:] else ""
        cached[key] = Vocabulary(strings=strings, eos_token_id=eos_token_id, mask_token_id=mask_token_id,
                                 prefix=dropped)
    return cached[key]


def restrict(constraint: Constraint, view: StepView, reach: torch.Tensor, logits: torch.Tensor, span_start: int,
             name: str) -> None:
    """Set to ``-inf`` the logits (in place) of tokens ``constraint`` does not allow at the positions ``reach``
    (B, L) the policy may commit; a position with none allowed is an error naming it."""
    positions = reach.nonzero()
    if not len(positions):
        return
    allowed = _allowed(constraint, view, positions, logits.shape[-1], name)
    empty = ~allowed.any(1)
    if empty.any():
        row, column = positions[empty.nonzero()[0, 0]].tolist()
        raise ValueError(f"constraint {name}: no token can go at row {row}, answer position "
                         f"{column - int(view.answer_starts[row])}: no answer that fits in the canvas satisfies it (a longer "
                         "gen_length, or another constraint)")
    _ban(logits, positions, span_start, ~allowed)


def _allowed(constraint: Constraint, view: StepView, positions: torch.Tensor, vocab: int, name: str) -> torch.Tensor:
    """(N, vocab) what ``constraint`` allows at ``positions`` (N, 2), checked and cut or padded to the logits'
    vocabulary (ids past the tokenizer are never allowed)."""
    allowed = constraint.allowed(view, positions)
    if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool or allowed.shape[0] != len(positions):
        raise ValueError(f"constraint {name}: allowed() must return a bool tensor (N, V) for N positions")
    allowed = allowed[:, :vocab]
    if allowed.shape[1] < vocab:
        allowed = torch.cat([allowed, allowed.new_zeros((len(positions), vocab - allowed.shape[1]))], dim=1)
    return allowed


def _ban(logits: torch.Tensor, positions: torch.Tensor, span_start: int, banned: torch.Tensor) -> None:
    """Logits of ``banned`` (N, V) tokens at ``positions`` (N, 2) to ``-inf``, in place."""
    rows, columns = positions.unbind(1)
    if int(banned.count_nonzero()) * 16 < banned.numel():  # a few per position (a list rule): set them one by one
        which, tokens = banned.nonzero(as_tuple=True)
        logits[rows[which], columns[which] - span_start, tokens] = float("-inf")
    else:  # most of the vocabulary (a grammar): rewrite the positions' rows
        span = logits[rows, columns - span_start]
        logits[rows, columns - span_start] = span.masked_fill(banned, float("-inf"))


def forced_ends(constraint: Constraint, view: StepView) -> torch.Tensor:
    """(B,) the column of each row's first EOS where the constraint allows only EOS at every masked column
    after it (the answer has ended: the engine cuts the row there), -1 elsewhere. ``view.x`` is the canvas
    after the step's commits."""
    is_eos = (view.x == view.eos_token_id) & view.in_answer
    first = torch.where(is_eos.any(1), is_eos.long().argmax(1), torch.full_like(view.row_active, -1, dtype=torch.long))
    columns = torch.arange(view.x.shape[1], device=view.x.device)[None, :]
    later = (columns > first[:, None]) & (first[:, None] >= 0)
    after = (view.x == view.mask_token_id) & later
    content_after = (later & (view.x != view.mask_token_id) & ~is_eos).any(1)
    ends = torch.full_like(first, -1)
    positions = after.nonzero()
    if not len(positions):
        return ends
    allowed = constraint.allowed(view, positions)
    only_eos = allowed[:, view.eos_token_id] & (allowed.sum(1) == 1)
    for row in (after.any(1) & ~content_after).nonzero().flatten().tolist():
        if bool(only_eos[positions[:, 0] == row].all()):
            ends[row] = first[row]
    return ends


def choose(
    constraint: Constraint, view: StepView, select: Callable[[StepView], tuple[torch.Tensor, torch.Tensor]],
    logits: torch.Tensor, span_start: int,
    rescore: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], name: str,
    reach: Callable[[StepView], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, StepView]:
    """The policy's commit (``select``), chosen again from the same logits with each refused (position,
    token) banned, until ``constraint`` refuses nothing; ``rescore(rows, columns)`` gives (x0, confidence)
    of those canvas positions from the banned logits (only they change). A position sits the step out when
    every token is banned there, or when it has been refused ``REFUSALS_BESIDE`` times beside kept commits
    of its row (a hole that no item can fill beside them would otherwise try the whole vocabulary); the
    next forward sees the kept commits. A row left with no position the policy may commit (``reach``) is
    an error."""
    refusals = torch.zeros(view.x.shape, dtype=torch.long, device=view.x.device)
    for _ in range(MAX_REFUSALS):
        commit, tokens = select(view)
        refused = constraint.refuse(view, commit, tokens) & commit
        if not refused.any():
            return commit, tokens, view
        rows, columns = refused.nonzero(as_tuple=True)
        logits[rows, columns - span_start, tokens[rows, columns]] = float("-inf")
        refusals += refused & (commit & ~refused).any(1, keepdim=True)
        banned = torch.isneginf(logits[rows, columns - span_start])
        if view.mask_token_id < logits.shape[-1]:
            banned[:, view.mask_token_id] = True  # (never a choice)
        sits_out = refusals >= REFUSALS_BESIDE
        sits_out[rows, columns] |= banned.all(-1)
        x0, confidence = view.x0.clone(), view.confidence.clone()
        x0[rows, columns], confidence[rows, columns] = rescore(rows, columns)
        view = attrs.evolve(view, x0=x0, confidence=confidence.masked_fill(sits_out, float("-inf")),
                            masked=view.masked & ~sits_out)
        stuck = view.row_active & ~reach(view).any(1)
        if stuck.any():
            row = int(stuck.nonzero()[0, 0])
            raise ValueError(f"constraint {name}: every token was refused at every position row {row} could take "
                             "this step: its canvas has no completion the constraint accepts")
    raise RuntimeError(f"constraint {name}: refused {MAX_REFUSALS} proposals in one step")
