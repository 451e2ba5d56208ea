"""Saved filters: a directory with ``filter.json`` (what it is, how it was made) and its weights.

Nothing is unpickled: MLP weights are safetensors, gradient-boosted trees are skops with a type allowlist.
The header is checked on load: kind, feature set and its width, block length.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import attrs
from attrs import frozen

from unmask._files import staged_directory

__all__ = ["TrainedFilter", "save_filter", "load_filter", "FORMAT"]

FORMAT = "unmask-filter/1"


@frozen(kw_only=True)
class TrainedFilter:
    """A fitted filter with what it needs to be applied: its feature set and block length."""

    estimator: Any = attrs.field(eq=False)
    features: str
    block_length: int | None  # None: any block length (per-position filters)
    info: dict[str, Any] = attrs.field(factory=dict, eq=False)  # metrics, traces, model hash

    @property
    def fingerprint(self) -> str:
        """sha256 of what was saved about this filter's training (its metrics and traces among it): two
        trainings share it only by accident. Rows decoded with it record it, so a retrained filter reruns them."""
        import hashlib

        made = {"estimator": repr(self.estimator), "features": self.features, "block_length": self.block_length,
                "info": self.info}
        return hashlib.sha256(json.dumps(made, sort_keys=True, default=str).encode()).hexdigest()

    def check_width(self, width: int) -> None:
        if self.block_length is not None and width != self.block_length:
            raise ValueError(f"this filter was trained on blocks of {self.block_length} tokens; the decode uses "
                             f"blocks of {width} (set block_length={self.block_length} or train a filter for it)")


def save_filter(trained: TrainedFilter, path: str | Path, *, overwrite: bool = False,
                inputs: Sequence[str | Path] = ()) -> Path:
    """Write ``trained`` to the directory ``path``: new, empty or an earlier filter (see ``staged_directory``)."""
    from unmask.core.plugins import registry

    path = Path(path)
    kind = next((e.name for e in registry().entries("filters") if isinstance(trained.estimator, e.factory)), None)
    if kind is None:
        raise ValueError(f"{type(trained.estimator).__name__} is not a registered filter kind")
    with staged_directory(path, command="train-filter", overwrite=overwrite, inputs=inputs) as staging:
        state = trained.estimator.save_weights(staging)
        header = {
            "format": FORMAT, "kind": kind, "params": trained.estimator.get_params(), "state": state,
            "features": trained.features, "block_length": trained.block_length, "versions": _versions(),
            **trained.info,
        }
        (staging / "filter.json").write_text(json.dumps(header, indent=2) + "\n")
    load_filter.cache_clear()
    return path


@lru_cache(maxsize=16)
def load_filter(path: str | Path) -> TrainedFilter:
    """Read a filter saved by :func:`save_filter`, checking its header against what is installed."""
    from safetensors import SafetensorError

    from unmask.core.plugins import create, registry
    from unmask.filters.features import block_stats, features

    path = Path(path)
    header_path = path / "filter.json"
    if not header_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved filter (no filter.json); train one with unmask train-filter")
    try:
        header = json.loads(header_path.read_text())
    except ValueError as error:
        raise ValueError(f"{header_path}: not valid JSON: {error}") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else header
        raise ValueError(f"{header_path}: format {found!r}, expected {FORMAT!r}")
    missing = [key for key in ("kind", "params", "state", "features", "block_length") if key not in header]
    if missing:
        raise ValueError(f"{header_path}: missing field(s) {', '.join(missing)}")
    if not isinstance(header["params"], dict) or not isinstance(header["state"], dict):
        raise ValueError(f"{header_path}: fields params and state must be objects")
    try:
        estimator = create("filters", (header["kind"], header["params"]))
        check = getattr(estimator, "check_params", None)
        if callable(check):
            check()  # sizes are checked before weights are allocated
    except (ValueError, TypeError) as error:
        raise ValueError(f"{header_path}: {error}") from error
    try:
        estimator = estimator.load_weights(path, header["state"])
    except (SafetensorError, RuntimeError, KeyError, TypeError, OSError) as error:
        raise ValueError(f"{path}: the weights do not load ({type(error).__name__}: {error})") from error
    if header["features"] not in registry().names("features"):
        raise ValueError(f"{header_path}: feature set {header['features']!r} is not registered")
    import torch

    probe = block_stats(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), 0, 0)
    width = features(header["features"], probe).shape[-1]
    if width != header["state"]["n_features"]:
        raise ValueError(f"{header_path}: trained on {header['state']['n_features']} features per position, but "
                         f"feature set {header['features']!r} now gives {width}")
    info = {k: v for k, v in header.items() if k not in ("format", "kind", "params", "state", "features", "block_length")}
    return TrainedFilter(estimator=estimator, features=header["features"], block_length=header["block_length"], info=info)


def _versions() -> dict[str, str]:
    import safetensors
    import skops
    import sklearn
    import torch

    from unmask._version import __version__

    return {"unmask": __version__, "torch": torch.__version__, "scikit-learn": sklearn.__version__,
            "skops": skops.__version__, "safetensors": safetensors.__version__}
