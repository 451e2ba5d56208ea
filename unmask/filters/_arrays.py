"""Input checks shared by the filters: features (N, W, F), labels and masks (N, W)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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
