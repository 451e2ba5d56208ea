"""Module paths of 0.1 that moved in 0.2 (CHANGELOG.md): importing one warns and gives the new module.

The aliases go in the release after 0.2.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED = {
    "unmask.contrib.transformers": "unmask.contrib.models.transformers",
    "unmask.contrib.llada": "unmask.contrib.models.llada",
    "unmask.contrib.reference": "unmask.contrib.models.reference",
    "unmask.testing.tiny": "unmask.contrib.models.tiny",
    "unmask.testing.strategies": "unmask.testing.generators",
    "unmask.contrib.bench": "unmask.contrib.eval.bench",
    "unmask.contrib.ablate": "unmask.contrib.eval.ablate",
    "unmask.contrib.report": "unmask.contrib.eval.report",
    "unmask.filters.traces": "unmask.contrib.train.traces",
    "unmask.filters.train": "unmask.contrib.train.filters",
    "unmask.strategies.constraints": "unmask.constraints.regex",
    "unmask.strategies.distinct_items": "unmask.constraints.distinct_items",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; the old path is removed after 0.2",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The new module is already executed."""


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
