from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from attrs import field, frozen

from unmask.core.component import Component
from unmask.core.types import Commit, DecodeConfig, StepView
from unmask.core.validators import number, optional
from unmask.strategies._select import top_k_mask

_WARNED: set[tuple[str, str]] = set()  # (filter's model, decoding model) pairs already warned about


def _resolve(value: Any) -> Any:
    from unmask.core.plugins import registry
    from unmask.filters.store import TrainedFilter, load_filter

    if isinstance(value, TrainedFilter):
        return value
    if not isinstance(value, (str, Path)):
        raise TypeError(f"filter must be a trained filter's name, a directory or a TrainedFilter, got {type(value).__name__}")
    # Registered names win over folders of the same name in the working directory (give those as ./name).
    named = registry().names("trained_filters")
    if isinstance(value, str) and value in named:
        return registry().get("trained_filters", value).factory()
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"filter={str(value)!r} is neither a saved filter directory nor a registered trained filter "
                         f"({', '.join(named) or 'none registered'}); train one with unmask train-filter")
    return load_filter(path.resolve())


@frozen(kw_only=True)
class Learn2PDPolicy(Component):
    """Commit masked positions whose learned filter says "already final" (probability > tau), united with
    the schedule's top-k (one token per step when steps = gen length); ``topk=False`` keeps only the
    engine's progress floor.

    Learn2PD (Bao et al. 2025, arXiv 2509.25188): a filter trained on oracle decodes predicts which
    predictions already equal the final output. ``filter`` is a saved filter directory or the name of a
    registered trained filter (``gbdt``, the default, and ``mlp``: those of the bundled model). ``tau``
    defaults to the one the filter was trained for (``unmask train-filter --tau``), else 0.96.
    """

    # String parameters a request to `unmask serve` may set: data, never a path (docs/serve.md).
    request_strings: ClassVar[dict[str, str]] = {"filter": "trained_filters"}  # a registered name only

    filter: Any = field(default="gbdt", eq=False)
    tau: float | None = field(default=None, validator=optional(number(minimum=0, maximum=1)))
    topk: bool = True
    trained: Any = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "trained", _resolve(self.filter))

    @property
    def threshold(self) -> float:
        """The probability a prediction's "final" must exceed: ``tau``, or the filter's own."""
        return self.tau if self.tau is not None else float(self.trained.info.get("tau", 0.96))

    def check_config(self, config: DecodeConfig) -> None:
        """A block-wide filter (the MLP) serves only the block length it was trained on."""
        self.trained.check_width(config.block_length)

    @property
    def artefact_sha256(self) -> str:
        """The filter's fingerprint: rows decoded with another filter are not reused (``unmask.core.needs``)."""
        return self.trained.fingerprint

    def requirements(self) -> set[str]:
        return {"model_sha256"}

    def provide(self, model_sha256: str) -> Learn2PDPolicy:
        self.warn_if_trained_on_another_model(model_sha256)
        return self

    def warn_if_trained_on_another_model(self, weights_sha256: str) -> None:
        """Warn once per filter and model when the filter's traces came from other weights: its
        probabilities describe that model's predictions, not this one's."""
        trained_on = self.trained.info.get("traces", {}).get("model")
        if trained_on and trained_on != weights_sha256 and (trained_on, weights_sha256) not in _WARNED:
            _WARNED.add((trained_on, weights_sha256))
            warnings.warn(f"learn2pd: filter {self.filter!r} was trained on model {trained_on[:12]}, not on this one "
                          f"({weights_sha256[:12]}); train one for it with unmask collect and unmask train-filter",
                          stacklevel=2)

    def select(self, view: StepView) -> Commit:
        from unmask.filters.features import features, view_stats

        stats = view_stats(view)
        self.trained.check_width(stats.width)
        rows = view.row_active
        final = torch.zeros_like(view.masked)
        if rows.any():
            active = rows.cpu()
            inputs = features(self.trained.features, stats)[active]
            probability = self.trained.estimator.predict_proba(inputs, sample_mask=stats.masked[active])
            probability = torch.as_tensor(probability, device=view.x.device)
            final[rows, view.block_start:view.block_end] = probability > self.threshold
        chosen = view.candidates & final
        if self.topk:
            chosen |= top_k_mask(view.candidate_confidence, view.schedule_k, block=view.block)
        return Commit.of(chosen, view)


def example_learn2pd(**_: Any) -> Learn2PDPolicy:
    """A policy with a small per-position filter fitted on synthetic statistics, for contract checks."""
    return Learn2PDPolicy(filter=_synthetic_filter(), tau=0.6)


@lru_cache(maxsize=1)
def _synthetic_filter() -> Any:
    from unmask.filters.features import block_stats, features
    from unmask.filters.gbdt import GBDTFilter
    from unmask.filters.store import TrainedFilter

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, 12, generator=generator) * 3
    masked = torch.rand(64, 8, generator=generator) < 0.7
    stats = block_stats(logits, masked, 0, eos_token_id=0)
    labels = stats.confidence > 0.5  # confident predictions are "final"
    X = features("position_stats", stats)
    estimator = GBDTFilter(max_iter=10).fit(X, labels, sample_mask=masked)
    return TrainedFilter(estimator=estimator, features="position_stats", block_length=None)
