"""Built-in KV-cache managers."""

from __future__ import annotations

from unmask.caches.none import NoCache
from unmask.core.plugins import Registrar, hookimpl

__all__ = ["NoCache"]


@hookimpl
def unmask_register_caches(registry: Registrar) -> None:
    registry.add("none", NoCache)
