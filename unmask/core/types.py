"""Value types and protocols shared by the engine and every component.

Records are frozen attrs classes; tensors inside them are excluded from equality (``eq=False``)
because tensor ``==`` is elementwise.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import attrs
import torch
from attrs import field, frozen

from unmask.core.validators import integer, number, optional

__all__ = [
    "Candidates", "Commit", "DecodeConfig", "DecodeResult", "StepView", "StopDecision", "CanvasState", "ForwardPlan",
    "UnmaskPolicy", "StopCriterion", "CacheManager", "DenoiserModel", "LayerStack", "Constraint", "Vocabulary",
]


TOKEN_ID = "a token id (an integer >= 0) or None"


def tensor_field(**kwargs: Any) -> Any:
    return field(eq=False, repr=False, **kwargs)


SEED_MAX = 2**64 - 1


@frozen(kw_only=True)
class DecodeConfig:
    """How to decode: LLaDA's semi-autoregressive schedule (gen length split into blocks, steps split evenly)."""

    gen_length: int = field(default=128, validator=integer(minimum=1))
    block_length: int | None = field(default=None, validator=optional(integer(minimum=1)))  # None: one block
    steps: int | None = field(default=None, validator=optional(integer(minimum=1)))  # None: gen_length (one token per step)
    temperature: float = field(default=0.0, validator=number(minimum=0))
    seed: int = field(default=0, validator=integer(minimum=0, maximum=SEED_MAX))  # what torch.Generator takes
    mask_token_id: int | None = field(default=None, validator=optional(integer(minimum=0, what=TOKEN_ID)))  # None: taken from the model
    eos_token_id: int | None = field(default=None, validator=optional(integer(minimum=0, what=TOKEN_ID)))  # None: from the model; pads the answer
    progress_floor: bool = True  # an active row that commits nothing commits its most confident position

    def __attrs_post_init__(self) -> None:
        if self.steps is not None and self.steps > self.gen_length:
            raise ValueError(f"steps={self.steps} must be at most gen_length={self.gen_length} "
                             "(a step commits at least one token)")
        if self.gen_length % self.num_block_tokens:
            raise ValueError(
                f"gen_length={self.gen_length} must be a multiple of block_length={self.block_length}"
            )
        if self.num_steps % self.num_blocks:
            raise ValueError(
                f"steps={self.num_steps} must be a multiple of the number of blocks "
                f"(gen_length={self.gen_length} / block_length={self.block_length} = {self.num_blocks})"
            )

    @property
    def num_block_tokens(self) -> int:
        return self.block_length or self.gen_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.num_block_tokens

    @property
    def num_steps(self) -> int:
        return self.steps or self.gen_length

    @property
    def steps_per_block(self) -> int:
        return self.num_steps // self.num_blocks


@frozen(kw_only=True)
class StepView:
    """What a component sees at one step. Shapes: B rows, L canvas columns, W = block width, V vocab.

    ``confidence`` is the probability of ``x0`` at masked positions that were predicted this step and
    ``-inf`` elsewhere; ``x0`` equals ``x`` where nothing was predicted.
    """

    x: torch.Tensor = tensor_field()  # (B, L) canvas before this step's commits
    x0: torch.Tensor = tensor_field()  # (B, L) predicted tokens
    confidence: torch.Tensor = tensor_field()  # (B, L) float
    masked: torch.Tensor = tensor_field()  # (B, L) bool, x == mask before this step
    window: torch.Tensor = tensor_field()  # (B, L) bool, the current block
    row_active: torch.Tensor = tensor_field()  # (B,) bool, rows still decoding this block
    schedule_k: torch.Tensor = tensor_field()  # (B,) long, LLaDA's linear schedule count for this step
    nfe: torch.Tensor = tensor_field()  # (B,) long, forwards so far, this one included
    # (B,) long, position-layers computed so far, this forward included (DecodeResult.recomputed); None: not kept
    recomputed: torch.Tensor | None = tensor_field(default=None)
    logits: torch.Tensor | None = tensor_field(default=None)  # (B, W, V) over the block, or None
    committed: torch.Tensor | None = tensor_field(default=None)  # (B, L) bool, set for stop criteria
    # After the commit, for stops and observers: positions the step returned to the mask or edited (None: none).
    remasked: torch.Tensor | None = tensor_field(default=None)  # (B, L) bool
    edited: torch.Tensor | None = tensor_field(default=None)  # (B, L) bool
    generator: torch.Generator | None = field(default=None, eq=False, repr=False)
    gen_start: int = 0  # the first column where any row's answer starts
    # (B, L) float64: the confidence each committed position had at the step that wrote it (-inf for an edit:
    # visible positions are not scored), +inf where no decision wrote one (prompt, masks, EoTP's cut): what a
    # re-masking policy ranks. None: not kept.
    commit_confidence: torch.Tensor | None = tensor_field(default=None)
    # (B, L) long: the global step that wrote each position (-1 where none did: prompt, masks). None: not kept.
    commit_step: torch.Tensor | None = tensor_field(default=None)
    # (B,) long: each row's first answer column (None: gen_start for every row). Rows of a block-causal
    # model's batch start their answers at different columns of the first block (unmask.core.layout).
    answer_start: torch.Tensor | None = tensor_field(default=None)
    # (B,) long: where each row's canvas ends (exclusive): later columns are hidden from the row (EoTP's cut, a
    # block-causal row's last block) and hold EOS. None: every row runs to the canvas's end.
    row_end: torch.Tensor | None = tensor_field(default=None)
    block_start: int = 0  # the block is columns [block_start, block_end)
    block_end: int = 0
    block_index: int = 0
    step: int = 0  # step within the block
    mask_token_id: int = 0
    eos_token_id: int = 0
    global_step: int = 0  # steps of the whole decode before this one
    total_steps: int = 0  # the decode's step budget (DecodeConfig.num_steps), for progress
    # The forward's logits over the columns it was fed, [span_start, span_start + S): every column with no
    # cache, the block and what follows under the prefix cache, the block alone under the dual cache.
    span_logits: torch.Tensor | None = tensor_field(default=None)  # (B, S, V)
    span_start: int = 0
    # (B, W, V): each block position's logits without its own token seen, from the same forward; only for a
    # policy that declares ``leave_one_out`` (unmask.core.component), else None.
    leave_one_out: torch.Tensor | None = tensor_field(default=None)
    # The engine's call to score candidate canvases of these rows (see ``Evaluate``); None for stops.
    evaluate: Any = field(default=None, eq=False, repr=False)

    @property
    def block(self) -> tuple[int, int]:
        """The current block's columns, ``(block_start, block_end)``."""
        return self.block_start, self.block_end

    @property
    def answer_starts(self) -> torch.Tensor:
        """(B,) long: each row's first answer column."""
        if self.answer_start is None:
            return torch.full((self.x.shape[0],), self.gen_start, dtype=torch.long, device=self.x.device)
        return self.answer_start

    @property
    def in_answer(self) -> torch.Tensor:
        """(B, L) bool: each row's answer columns (from its answer start to the canvas end)."""
        return torch.arange(self.x.shape[1], device=self.x.device)[None, :] >= self.answer_starts[:, None]

    @property
    def in_canvas(self) -> torch.Tensor:
        """(B, L) bool: the columns each row sees (before its ``row_end``)."""
        columns = torch.arange(self.x.shape[1], device=self.x.device)[None, :]
        return columns < (self.x.shape[1] if self.row_end is None else self.row_end[:, None])

    @property
    def candidates(self) -> torch.Tensor:
        """(B, L) bool: positions a policy may commit (masked, in the block, row active)."""
        return self.masked & self.window & self.row_active[:, None]

    @property
    def candidate_confidence(self) -> torch.Tensor:
        """(B, L) confidence with ``-inf`` outside the candidates."""
        return self.confidence.masked_fill(~self.candidates, float("-inf"))

    def logits_at(self, start: int, end: int) -> torch.Tensor | None:
        """(B, end - start, V) logits of canvas columns ``[start, end)``, committed or not, in the block or
        not; None where this step's forward did not feed all of them (a cache fed less)."""
        if self.span_logits is None:
            return None
        first, last = start - self.span_start, end - self.span_start
        if first < 0 or last > self.span_logits.shape[1] or first >= last:
            return None
        return self.span_logits[:, first:last]


@frozen(kw_only=True)
class Commit:
    """A policy's decision: what ``select`` returns. ``mask`` positions (masked, within the policy's reach) take
    ``tokens``; optionally ``remask`` returns committed positions to the mask and ``edit`` replaces committed
    tokens with ``tokens`` there (revising decoders: re-masking, token editing). ``evaluated`` names the
    candidate (an index into what ``view.evaluate`` returned, -1 for none) that each row's canvas equals after
    this commit: the next step reuses its logits instead of a forward. A policy whose ``select`` returns a
    bool mask is adapted when it is created (``unmask.create``): its decision is ``Commit.of(mask, view)``.

    The engine checks every field (docs/architecture.md: the rules) and keeps the loop bounded: an active
    row fills at least one position per step, and a position returns to the mask at most
    ``unmask.core.engine.REMASKS_PER_POSITION`` times per decode (re-masks past that are dropped)."""

    mask: torch.Tensor = tensor_field()  # (B, L) bool
    tokens: torch.Tensor = tensor_field()  # (B, L) long, read at mask and edit positions only
    remask: torch.Tensor | None = tensor_field(default=None)  # (B, L) bool: committed positions to mask again
    edit: torch.Tensor | None = tensor_field(default=None)  # (B, L) bool: committed positions given ``tokens``
    # (B,) long: the candidate that each row's canvas equals after this commit, -1 for none. Where every
    # active row names one, the next step reuses that candidate's logits instead of running the model again.
    evaluated: torch.Tensor | None = tensor_field(default=None)

    @classmethod
    def of(cls, mask: torch.Tensor, view: StepView) -> Commit:
        """Fill ``mask`` with the step's predictions (``view.x0``)."""
        return cls(mask=mask, tokens=view.x0)


@frozen(kw_only=True)
class Candidates:
    """What ``view.evaluate`` returns for K candidate canvases: per candidate the predictions the engine
    would make on it (as in a ``StepView``) and the logits of the columns it fed."""

    x0: torch.Tensor = tensor_field()  # (K, B, L)
    confidence: torch.Tensor = tensor_field()  # (K, B, L), -inf where not masked or not fed
    span_logits: torch.Tensor = tensor_field()  # (K, B, S, V)
    span_start: int


@frozen(kw_only=True)
class StopDecision:
    """Per-row stop: ``done`` rows are finalised; ``end`` (or -1) is the last column a row keeps."""

    done: torch.Tensor = tensor_field()  # (B,) bool
    end: torch.Tensor | None = tensor_field(default=None)  # (B,) long, -1 = no cut


@frozen(kw_only=True)
class CanvasState:
    """What a cache manager needs to plan a forward."""

    input_ids: torch.Tensor = tensor_field()  # (B, L)
    attention_mask: torch.Tensor = tensor_field()  # (B, L) long, 1 = real token
    position_ids: torch.Tensor = tensor_field()  # (B, L)
    block_start: int
    block_end: int
    step: int  # within the block
    lookbehind: int = 0  # 1 for shift_logits models: column c is predicted from c - 1
    gen_start: int = 0  # the first column of any row's answer: every column before it is prompt or padding


@frozen(kw_only=True)
class ForwardPlan:
    """One forward: feed columns ``[start, end)`` of the canvas, attending to ``past_key_values``."""

    start: int
    end: int
    attention_mask: torch.Tensor = tensor_field()  # (B, keys)
    past_key_values: Any = field(default=None, eq=False, repr=False)
    # The forward writes the cache that later steps read (a refresh): its logits cannot be taken from a
    # forward on another canvas, and candidate canvases are scored on a copy of the cache.
    fills_cache: bool = False
    # A cache that runs the model itself, a layer at a time (Elastic-Cache): ``run(rows)`` gives the plan's
    # (B, end - start, V) logits for the (B,) bool ``rows`` (zeros elsewhere) and (B,) position-layers it
    # computed for each row; the engine then calls it instead of the model.
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, eq=False, repr=False)


@frozen(kw_only=True)
class DecodeResult:
    """Decoded tokens and how they were made."""

    tokens: torch.Tensor = tensor_field()  # (B, gen_length), EOS after each answer
    answer_lengths: torch.Tensor = tensor_field()  # (B,) tokens before the first EOS
    nfe: torch.Tensor = tensor_field()  # (B,) forwards each row took part in (a batch of candidates: one)
    commit_step: torch.Tensor = tensor_field()  # (B, gen_length) global step of each commit, -1 if cut
    wall_s: float
    config: DecodeConfig
    components: dict[str, Any]  # kind -> {"name", "params", "provider", "version"}
    candidate_rows: torch.Tensor | None = tensor_field(default=None)  # (B,) candidate canvases forwarded
    # (B,) positions x layers each row's forwards computed (a forward of S columns through n layers: S x n;
    # a cache that recomputes per layer counts what it recomputed); candidate canvases are not counted.
    recomputed: torch.Tensor | None = tensor_field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens.tolist(),
            "answer_lengths": self.answer_lengths.tolist(),
            "nfe": self.nfe.tolist(),
            "candidate_rows": None if self.candidate_rows is None else self.candidate_rows.tolist(),
            "recomputed": None if self.recomputed is None else self.recomputed.tolist(),
            "wall_s": self.wall_s,
            "config": attrs.asdict(self.config),
            "components": self.components,
        }


@runtime_checkable
class UnmaskPolicy(Protocol):
    """Chooses which masked positions of the block to commit at a step."""

    def select(self, view: StepView) -> Commit: ...


@runtime_checkable
class StopCriterion(Protocol):
    """Decides, after a step's commits, which rows are finished and where answers end."""

    def check(self, view: StepView) -> StopDecision: ...


@runtime_checkable
class CacheManager(Protocol):
    """Decides what each forward sees: ``plan`` gives the columns to feed and the keys/values to attend to
    (a transformers ``Cache`` that the forward itself fills or overwrites)."""

    def reset(self, model: Any = None) -> None:
        """Forget what a previous decode kept; raise ``ValueError`` if ``model`` cannot be served."""

    def plan(self, state: CanvasState) -> ForwardPlan: ...

    # Optional: ``finish_block(state) -> ForwardPlan | None``, a forward the engine runs once a block is
    # finished, counted in the NFE (the exact cache of a block-causal model stores the block with it).


class LayerStack(Protocol):
    """A model a layer at a time, for a cache that decides per layer what to recompute: what
    ``model.layer_stack()`` returns where the model declares ``runs_layers`` (``ModelInfo``). Hidden states
    are (B, Q, H), keys and values (B, kv_heads, K, head_dim), masks (B, 1, Q, K) additive, logits unshifted."""

    count: int  # layers

    def full(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
             ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The model's own forward: logits and, per layer, its input hidden states, keys and values."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def mask(self, keys: torch.Tensor, queries: int) -> torch.Tensor:
        """Every query sees the real keys (``keys`` (B, K) nonzero)."""

    def project(self, index: int, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A layer's queries, keys and values of the fed columns, position-embedded."""

    def attend(self, index: int, hidden: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor, watched: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rest of the layer for the fed columns, over ``keys``/``values``: its output and the (B, heads,
        W, K) attention weights of the queries at slots ``watched`` (B, W), if asked."""

    def layer(self, index: int, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
              watched: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A layer over every column: output, keys, values, the attention weights of the columns ``watched``."""

    def attention(self, index: int, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                  keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, heads, Q, K) attention weights of queries from the layer's input ``hidden`` over ``keys``."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DenoiserModel(Protocol):
    """A model that predicts every position of a (partly masked) canvas at once."""

    # Read-only properties here, so that plain attributes and properties both satisfy the protocol.
    @property
    def mask_token_id(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def shift_logits(self) -> bool:
        """Dream-style: the logits at i predict position i + 1."""

    # Optional: ``block_size`` (int), for a model that attends block-causally over blocks of that many
    # positions from position 0 (SDAR, Fast-dLLM v2, LLaDA 2.0); the engine aligns its blocks to them.

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> torch.Tensor: ...


@frozen(kw_only=True)
class Vocabulary:
    """What a constraint knows of the tokenizer: the text each token id decodes to inside a sentence
    (``""`` for special tokens and ids the tokenizer cannot decode alone), and the ids the canvas uses."""

    strings: tuple[str, ...]
    eos_token_id: int
    mask_token_id: int
    # What the tokenizer drops from the start of an answer it decodes alone: " " for word-start marks
    # (SentencePiece's "▁"), so an answer's text is its tokens' strings joined, less this prefix.
    prefix: str = ""


@runtime_checkable
class Constraint(Protocol):
    """Keeps every row's answer completable into a word of a language (structured output).

    Before the policy chooses, ``allowed`` says which tokens may go at the masked positions it could commit
    (the engine sets the logits of the others to ``-inf``); after it chose, ``refuse`` names the committed
    positions whose tokens, taken together with the others, would leave no completion (the engine bans those
    (position, token) pairs and the policy chooses again from the same logits, without a new forward). An
    answer ends at its first EOS: where the constraint allows only EOS at every hole after a committed EOS,
    the engine fills the rest of the row with EOS at once.
    """

    def prepare(self, vocabulary: Vocabulary, gen_start: int) -> None:
        """Once per decode, before any step: the tokens' strings; the answer starts at column ``gen_start``."""

    def allowed(self, view: StepView, positions: torch.Tensor) -> torch.Tensor:
        """(N, 2) rows and columns of masked positions -> (N, V) bool: the tokens each may take."""

    def refuse(self, view: StepView, commit: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: positions of ``commit`` whose ``tokens`` must not be committed together with the rest;
        never all of a row's commits (taken one at a time in order of confidence, the first is allowed)."""


StepObserver = Callable[[StepView], None]
