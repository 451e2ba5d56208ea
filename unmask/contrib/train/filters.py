"""Fit a filter on traces: split by prompt (80/10/10), fit, report validation metrics, save."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unmask._files import check_output_directory
from unmask.filters.features import features
from unmask.filters.store import TrainedFilter, save_filter
from unmask.contrib.train.traces import Traces

__all__ = ["DEFAULT_FEATURES", "split_by_prompt", "filter_metrics", "train_filter"]

DEFAULT_FEATURES = {"mlp": "block_confidence", "gbdt": "position_stats"}


def split_by_prompt(traces: Traces, seed: int = 0) -> dict[str, torch.Tensor]:
    """Record masks for train / validation / test (80/10/10 of the prompts): no prompt is in two parts."""
    keys = traces.task * 10**9 + traces.prompt  # prompts are (task, item seed)
    unique = torch.unique(keys)
    order = unique[torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))]
    cut_train, cut_validation = int(0.8 * len(order)), int(0.9 * len(order))
    parts = {"train": order[:cut_train], "validation": order[cut_train:cut_validation], "test": order[cut_validation:]}
    return {name: torch.isin(keys, members) for name, members in parts.items()}


def filter_metrics(probability: np.ndarray, labels: np.ndarray, masked: np.ndarray, tau: float) -> dict[str, float]:
    """Over masked positions: ROC AUC, and precision / recall of ``probability > tau``."""
    from sklearn.metrics import roc_auc_score

    p, y = probability[masked], labels[masked]
    chosen = p > tau
    return {
        "positions": int(len(y)), "positive_rate": round(float(y.mean()), 4),
        "auc": round(float(roc_auc_score(y, p)), 4) if 0 < y.sum() < len(y) else float("nan"),
        f"precision@{tau}": round(float(y[chosen].mean()), 4) if chosen.any() else float("nan"),
        f"recall@{tau}": round(float(chosen[y].mean()), 4) if y.any() else float("nan"),
    }


def train_filter(
    traces_dirs: str | Path | list[str | Path], kind: str, out: str | Path, *, feature_set: str | None = None, tau: float = 0.96,
    params: dict[str, Any] | None = None, seed: int = 0, overwrite: bool = False,
) -> TrainedFilter:
    """Fit a ``kind`` filter on the training prompts of one or more traces directories and save it with its
    validation metrics."""
    from unmask.core.plugins import create

    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 <= tau <= 1:
        raise ValueError(f"tau must be a probability in [0, 1], got {tau!r}")
    traces_dirs = list(traces_dirs) if isinstance(traces_dirs, (list, tuple)) else [traces_dirs]
    check_output_directory(out, command="train-filter", overwrite=overwrite, inputs=traces_dirs)
    estimator = create("filters", (kind, dict(params or {})))  # bad parameters fail before traces load
    check = getattr(estimator, "check_params", None)
    if callable(check):
        check()
    traces = Traces(*traces_dirs)
    feature_set = feature_set or DEFAULT_FEATURES.get(kind, "position_stats")
    X = features(feature_set, traces.stats).numpy()
    y, masked = traces.labels.numpy(), traces.stats.masked.numpy()
    parts = {name: part.numpy() for name, part in split_by_prompt(traces, seed).items()}
    started = time.perf_counter()
    train = parts["train"]
    estimator.fit(X[train], y[train], sample_mask=masked[train])
    fit_s = time.perf_counter() - started
    metrics = {
        name: filter_metrics(estimator.predict_proba(X[part]), y[part], masked[part], tau)
        for name, part in parts.items() if name != "train" and part.any()
    }
    # A filter over whole blocks (it has a fitted width_) applies only to that block length.
    block_length = getattr(estimator, "width_", None)
    trained = TrainedFilter(
        estimator=estimator, features=feature_set, block_length=block_length,
        info={"metrics": metrics, "fit_s": round(fit_s, 2), "tau": tau, "split_seed": seed,
              "traces": {"model": traces.manifests[0]["settings"]["model"], "records": len(traces),
                         "sets": [{"directory": Path(d).name, **m["settings"]}
                                  for d, m in zip(traces_dirs, traces.manifests)]}},
    )
    save_filter(trained, out, overwrite=overwrite, inputs=traces_dirs)
    return trained
