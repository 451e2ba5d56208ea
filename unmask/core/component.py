"""What a component may declare beyond its kind's one required method, in one place with the defaults.

Every built-in policy, stop criterion, cache manager and constraint derives from :class:`Component` and
overrides only what it has. The engine, the runner, trace collection, the CLI and the server read these
declarations directly; none of them looks a component's abilities up by name. A component of another class
(a plug-in written against the protocols alone) is adapted once, when :func:`unmask.create` builds it:
``unmask.core.plugins.declared``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from unmask.core.types import CanvasState, DecodeConfig, ForwardPlan

__all__ = ["Component", "ABILITIES"]


class Component:
    """The optional abilities of a component, with their defaults (docs/architecture.md: the table)."""

    __slots__ = ()

    # Policies: where a policy may commit: "block" (masked positions of the current block) or "canvas" (any
    # masked answer position).
    reach: ClassVar[str] = "block"
    # Policies: whether decisions draw from the decode's shared random stream (rows then depend on each other).
    stochastic: ClassVar[bool] = False
    # Policies: how many steps a row's block stays open after its last mask is filled, for a policy that edits
    # committed tokens there (LLaDA 2.1's post-fill edits); a step that edits nothing closes it.
    steps_after_fill: int = 0
    # Policies: whether the policy reads ``view.leave_one_out``: each block position's logits predicted without
    # seeing that position's own token, from the step's one forward (a masked copy of the block appended, each
    # copy position attending to everything but its twin, at the twin's position id). Needs the full forward
    # (cache "none") and a model that takes (B, 1, Q, K) masks (``accepts_pair_mask``): a revokable decoder's check.
    leave_one_out: ClassVar[bool] = False
    # Any component: whether decisions read the decode's clock (``view.global_step``, ``view.total_steps``). A
    # row added to a running decode (``Decoding.add``) joins that clock midway, so such decodes take no new rows.
    reads_clock: ClassVar[bool] = False
    # `unmask serve`: the string parameters a request may set, and as what (docs/serve.md); none by default.
    request_strings: ClassVar[Mapping[str, str]] = {}
    # The digest of a trained artefact the component decodes with (recorded in result rows), or None.
    artefact_sha256: str | None = None

    def check_config(self, config: DecodeConfig) -> None:
        """Refuse ``config`` before any forward with a ``ValueError`` naming the rule (a filter trained on
        another block length, say)."""

    def requirements(self) -> set[str]:
        """What the component needs of the application that runs it (``unmask.core.needs.NEEDS``)."""
        return set()

    def provide(self, **values: Any) -> Any:
        """The component to decode with, given the values of :meth:`requirements`."""
        return self

    # Caches.

    def finish_block(self, state: CanvasState) -> ForwardPlan | None:
        """A forward the engine runs once a block is finished (counted in the forwards), or None: the exact
        cache of a block-causal model stores the finished block's keys and values with it."""
        return None

    def rows_of(self, past_key_values: Any, index: torch.Tensor) -> Any:
        """``past_key_values`` of a plan for the rows ``index`` alone, or None where it cannot be cut (the
        engine then feeds every row to a forward that needs only some)."""
        return None

    def repeated(self, past_key_values: Any, times: int) -> Any:
        """``past_key_values`` with every row repeated ``times`` times (for a batch of candidate canvases), or
        None where it cannot be (candidates are then scored without a cache)."""
        return None


# The abilities above by name: an adapted component takes each one it has (unmask.core.plugins.declared).
ABILITIES = ("reach", "stochastic", "reads_clock", "steps_after_fill", "leave_one_out", "request_strings",
             "artefact_sha256", "check_config", "requirements", "provide", "finish_block", "rows_of", "repeated")
