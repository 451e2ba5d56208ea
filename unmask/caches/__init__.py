"""Built-in KV-cache managers."""

from __future__ import annotations

from unmask.caches.block import DualCache, PrefixCache
from unmask.caches.elastic import ElasticCache
from unmask.caches.exact import ExactBlockCache
from unmask.caches.none import NoCache
from unmask.core.plugins import Registrar, hookimpl

__all__ = ["NoCache", "PrefixCache", "DualCache", "ExactBlockCache", "ElasticCache"]


@hookimpl
def unmask_register_caches(registry: Registrar) -> None:
    registry.add("none", NoCache)
    registry.add("prefix", PrefixCache)
    registry.add("dual", DualCache)
    registry.add("exact", ExactBlockCache)
    registry.add("elastic", ElasticCache)
