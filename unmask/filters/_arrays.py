"""What the filter estimators share: scikit-learn's parameter convention, and input checks for features
(N, W, F), labels and masks (N, W)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch


class FilterEstimator:
    """scikit-learn's estimator convention without importing scikit-learn: ``__init__`` stores its keyword
    arguments unchanged, ``get_params``/``set_params`` read and write them, fitted state ends in ``_``."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = [name for name in inspect.signature(type(self).__init__).parameters if name != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> FilterEstimator:
        unknown = sorted(set(params) - set(self.get_params()))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no parameter {', '.join(unknown)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def check_params(self) -> None:
        """Each parameter has the type of its default (an int where the default is an int, and so on), and
        sizes and rates are positive: a bad value fails here, before traces load or weights are allocated."""
        defaults = {name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()
                    if name != "self"}
        for name, value in self.get_params().items():
            default = defaults.get(name)
            if isinstance(default, bool):
                ok, rule = isinstance(value, bool), "true or false"
            elif isinstance(default, int):
                minimum = 1 if default > 0 else 0
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
                rule = f"an integer >= {minimum}"
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")
                ok = ok and (value > 0 or default == 0)
                rule = "a finite number > 0" if default > 0 else "a finite number >= 0"
            else:
                continue
            if not ok:
                raise ValueError(f"{type(self).__name__}: parameter {name} must be {rule}, got {value!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def as_features(X: Any) -> np.ndarray:
    array = _numpy(X)
    if array.ndim != 3:
        raise ValueError(f"X must be a 3-D array (records, block width, features), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("X must be finite (no NaN or infinity)")
    return np.ascontiguousarray(array, dtype=np.float32)


def as_labels(y: Any, X: Any) -> np.ndarray:
    array = _numpy(y)
    if array.shape != tuple(np.shape(X))[:2]:
        raise ValueError(f"y must have shape (records, block width) = {tuple(np.shape(X))[:2]}, got {array.shape}")
    return array.astype(bool)


def as_mask(mask: Any, labels: np.ndarray) -> np.ndarray:
    if mask is None:
        return np.ones_like(labels, dtype=bool)
    array = _numpy(mask)
    if array.shape != labels.shape:
        raise ValueError(f"sample_mask must have the labels' shape {labels.shape}, got {array.shape}")
    return array.astype(bool)
