"""What a component needs of the application that runs it, asked through one hook, never by its class.

A component that needs something beyond the decode's inputs (the oracle: the vanilla output of the same
prompts; Learn2PD: the decoding model's weights hash, to warn when its filter was trained on another model)
declares the names with ``requirements() -> set[str]`` and takes the values with ``provide(**values)``, which
returns the component to decode with (itself or a new one), abilities of ``unmask.core.component.Component``.
A component whose output depends on a trained artefact says which with ``artefact_sha256`` (a digest, recorded
in result rows so that a retrained artefact reruns them). The runner, trace collection, the CLI and the server
ask these hooks, so a plug-in of a new kind needs no change to any of them: see docs/plugins.md.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from unmask.core.plugins import declared

__all__ = ["NEEDS", "requirements", "provide", "artefact_sha256"]

# Every name a component may ask for, and what the application gives for it.
NEEDS = {
    "reference": "(B, gen_length) long tensor: the vanilla output (topk, one token per step) of the same prompts",
    "model_sha256": "str: the decoding model's weights hash",
}


def requirements(component: Any) -> frozenset[str]:
    """The names ``component`` needs (none for a spec string or a component without the hook)."""
    needed = frozenset() if isinstance(component, (str, tuple)) else frozenset(declared(component).requirements())
    unknown = needed - NEEDS.keys()
    if unknown:
        raise ValueError(f"{type(component).__name__} requires {sorted(unknown)}; an application provides only "
                         f"{sorted(NEEDS)}")
    return needed


def provide(component: Any, available: Mapping[str, Callable[[], Any]], *, where: str = "this command") -> Any:
    """``component`` given what it needs, each value computed (``available[name]()``) only if it is needed."""
    needed = requirements(component)
    if not needed:
        return component
    missing = needed - available.keys()
    if missing:
        raise ValueError(f"{type(component).__name__} needs {', '.join(sorted(missing))} ({NEEDS[min(missing)]}), "
                         f"which {where} cannot provide")
    return declared(component).provide(**{name: available[name]() for name in sorted(needed)})


def artefact_sha256(component: Any) -> str | None:
    """The digest of the trained artefact ``component`` decodes with, if any."""
    digest = None if isinstance(component, (str, tuple)) else declared(component).artefact_sha256
    return digest if isinstance(digest, str) else None
