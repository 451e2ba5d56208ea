from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unmask.filters._arrays import FilterEstimator, as_features, as_labels, as_mask

# scikit-learn and skops are imported where a model is fitted, saved or loaded, not with the registry.

# The exact types a saved model may hold beyond skops' own safe defaults (scikit-learn estimators, numpy
# arrays, plain containers); any other type in the file is refused before anything is constructed.
TRUSTED_TYPES = frozenset({"sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"})
# A skops file is a zip archive; its members may hold at most this much once inflated (a filter of 200 trees
# of 31 leaves takes under 1 MB), so a small archive that inflates to gigabytes is refused before reading.
MAX_INFLATED_BYTES = 64 * 2**20


def _check_inflated_size(path: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path} is not a readable skops file: {error}") from error
    if inflated > MAX_INFLATED_BYTES:
        raise ValueError(f"{path} inflates to {inflated / 2**20:.0f} MB, over the {MAX_INFLATED_BYTES // 2**20} MB "
                         "a filter may hold; refused before reading")


class GBDTFilter(FilterEstimator):
    """Gradient-boosted trees over per-position features: is this position's prediction already final?

    scikit-learn's ``HistGradientBoostingClassifier`` on one row per block position (F features), so one
    model serves any block width. ``fit`` uses the positions where ``sample_mask`` is set (the masked
    ones: committed positions are final by construction). Source: unmask, a Learn2PD filter variant
    (arXiv 2509.25188).
    """

    def __init__(self, max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 random_state: int = 0) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_mask: Any = None) -> GBDTFilter:
        features, labels = as_features(X), as_labels(y, X)
        rows = as_mask(sample_mask, labels)
        targets = labels[rows]
        if len(np.unique(targets)) < 2:
            raise ValueError("y has a single class at the selected positions; a filter needs both final and "
                             "not-yet-final examples")
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.model_ = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            early_stopping=False, random_state=self.random_state,
        ).fit(features[rows], targets)
        self.n_features_in_ = features.shape[2]
        return self

    def predict_proba(self, X: Any, sample_mask: Any = None) -> np.ndarray:
        """(N, W) probability that each position's prediction is already final; with ``sample_mask``, only
        where it is set (0 elsewhere): trees cost per position, and committed ones need no answer."""
        features = as_features(X)
        if features.shape[2] != self.n_features_in_:
            raise ValueError(f"this filter takes {self.n_features_in_} features per position, got {features.shape[2]}")
        rows = as_mask(sample_mask, features[..., 0])
        probability = np.zeros(rows.shape, dtype=np.float64)
        if rows.any():
            probability[rows] = self.model_.predict_proba(features[rows])[:, 1]
        return probability

    def save_weights(self, directory: Path) -> dict[str, Any]:
        import skops.io

        skops.io.dump(self.model_, directory / "model.skops")
        return {"n_features": self.n_features_in_}

    def load_weights(self, directory: Path, state: dict[str, Any]) -> GBDTFilter:
        import skops.io
        from sklearn.ensemble import HistGradientBoostingClassifier

        path = directory / "model.skops"
        _check_inflated_size(path)
        try:
            untrusted = skops.io.get_untrusted_types(file=path)
        except Exception as error:  # a truncated zip, a schema skops cannot read: nothing was constructed
            raise ValueError(f"{path} is not a readable skops file: {error}") from error
        refused = sorted(set(untrusted) - TRUSTED_TYPES)
        if refused:
            raise ValueError(f"{path} holds types a gradient-boosted filter never needs, refused: {', '.join(refused)}")
        model = skops.io.load(path, trusted=sorted(untrusted))
        if not isinstance(model, HistGradientBoostingClassifier):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a HistGradientBoostingClassifier")
        self.model_ = model
        self.n_features_in_ = state["n_features"]
        return self
