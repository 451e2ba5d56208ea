from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from unmask.filters._arrays import FilterEstimator, as_features, as_labels, as_mask


class MLPFilter(FilterEstimator):
    """Learn2PD's filter: a 2-layer MLP from a block's features to one "already final" logit per position.

    Bao et al. 2025 (arXiv 2509.25188): the block's confidence vector (W = 32) → 32 (ReLU) → 32, binary
    cross-entropy at every position, full-batch AdamW at lr 3e-3. ``X`` is (N, W, F), flattened to W·F
    inputs; ``y`` is (N, W). ``masked_only=True`` counts the loss only where ``sample_mask`` is set.
    """

    def __init__(self, hidden: int = 32, max_iter: int = 2000, learning_rate: float = 3e-3,
                 weight_decay: float = 0.01, masked_only: bool = False, random_state: int = 0) -> None:
        self.hidden = hidden
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.masked_only = masked_only
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_mask: Any = None) -> MLPFilter:
        features, labels = as_features(X), as_labels(y, X)
        weights = as_mask(sample_mask, labels) if self.masked_only else np.ones_like(labels, dtype=bool)
        count, width, n_features = features.shape
        torch.manual_seed(self.random_state)
        self.network_ = _network(width * n_features, self.hidden, width)
        inputs = torch.from_numpy(features.reshape(count, -1))
        targets = torch.from_numpy(labels.astype(np.float32))
        weight = torch.from_numpy(weights.astype(np.float32))
        optimizer = torch.optim.AdamW(self.network_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        for _ in range(self.max_iter):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.network_(inputs), targets, weight=weight,
                                                                        reduction="sum") / weight.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.network_.eval()
        self.width_, self.n_features_in_, self.loss_ = width, n_features, float(loss.detach())
        return self

    def predict_proba(self, X: Any, sample_mask: Any = None) -> np.ndarray:
        """(N, W) probability that each position's prediction is already final (the whole block is one
        input, so ``sample_mask`` changes nothing)."""
        features = as_features(X)
        if features.shape[1:] != (self.width_, self.n_features_in_):
            raise ValueError(f"this MLP filter takes (N, {self.width_}, {self.n_features_in_}) features, "
                             f"got {features.shape}: block length or feature set differs from training")
        with torch.no_grad():
            logits = self.network_(torch.from_numpy(features.reshape(len(features), -1)))
        return torch.sigmoid(logits).numpy()

    def save_weights(self, directory: Path) -> dict[str, Any]:
        save_file({k: v.contiguous() for k, v in self.network_.state_dict().items()}, directory / "weights.safetensors")
        return {"width": self.width_, "n_features": self.n_features_in_}

    def load_weights(self, directory: Path, state: dict[str, Any]) -> MLPFilter:
        from safetensors import safe_open

        self.width_, self.n_features_in_ = state["width"], state["n_features"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (self.width_, self.n_features_in_)):
            raise TypeError(f"state width and n_features must be positive integers, got {state}")
        path = directory / "weights.safetensors"
        # The file's shapes must be the network's before the network is allocated: a header that claims a
        # huge width cannot make this allocate more than the file holds.
        expected = {"0.weight": (self.hidden, self.width_ * self.n_features_in_), "0.bias": (self.hidden,),
                    "2.weight": (self.width_, self.hidden), "2.bias": (self.width_,)}
        with safe_open(path, framework="pt") as reader:
            found = {name: tuple(reader.get_slice(name).get_shape()) for name in reader.keys()}
        if found != expected:
            raise ValueError(f"{path} holds tensors {found}, but the header's width {self.width_}, features "
                             f"{self.n_features_in_} and hidden {self.hidden} need {expected}")
        self.network_ = _network(self.width_ * self.n_features_in_, self.hidden, self.width_)
        weights = load_file(path)
        if not all(torch.isfinite(tensor).all() for tensor in weights.values()):
            raise ValueError(f"{directory / 'weights.safetensors'} holds NaN or infinite weights")
        self.network_.load_state_dict(weights)
        self.network_.eval()
        return self


def _network(inputs: int, hidden: int, outputs: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, outputs))
