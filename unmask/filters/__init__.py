"""Learn2PD's filters: feature sets, the estimators (MLP, gradient boosting) and their safe store.

Built-in filters and feature sets register through the same hooks as any plug-in. Traces and training
live in :mod:`unmask.contrib.train`.
"""

from __future__ import annotations

from unmask.core.plugins import Registrar, hookimpl
from unmask.filters._arrays import FilterEstimator
from unmask.filters.features import (BlockConfidence, BlockStats, PositionConflicts, PositionStats, block_stats,
                                     features, view_stats)
from unmask.filters.gbdt import GBDTFilter
from unmask.filters.mlp import MLPFilter
from unmask.filters.store import TrainedFilter, load_filter, save_filter

__all__ = [
    "BlockStats", "block_stats", "view_stats", "features", "BlockConfidence", "PositionStats", "PositionConflicts",
    "FilterEstimator", "MLPFilter", "GBDTFilter", "TrainedFilter", "save_filter", "load_filter",
]


@hookimpl
def unmask_register_filters(registry: Registrar) -> None:
    registry.add("mlp", MLPFilter)
    registry.add("gbdt", GBDTFilter)


@hookimpl
def unmask_register_features(registry: Registrar) -> None:
    registry.add("block_confidence", BlockConfidence)
    registry.add("position_stats", PositionStats)
    registry.add("position_conflicts", PositionConflicts)
