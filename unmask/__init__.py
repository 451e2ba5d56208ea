"""unmask: pluggable decoding for diffusion language models."""

from unmask._version import __version__
from unmask import _moved  # noqa: E402

_moved.install()

from unmask.core.component import Component  # noqa: E402
from unmask.core.engine import Decoding, decode, linear_schedule, pad_prompts, steps  # noqa: E402
from unmask.core.plugins import (  # noqa: E402
    create, describe, hookimpl, register_plugin, registry, unregister_plugin,
)
from unmask.core.spec import SpecError, parse_spec  # noqa: E402
from unmask.core.types import (  # noqa: E402
    CacheManager, Candidates, Commit, DecodeConfig, DecodeResult, DenoiserModel, StepView, StopCriterion,
    StopDecision, UnmaskPolicy,
)


def __getattr__(name: str):
    # transformers is imported only when a checkpoint is loaded.
    if name == "load":
        from unmask.contrib.models.transformers import load

        return load
    if name == "ablate":
        from unmask.contrib.eval.ablate import ablate

        return ablate
    raise AttributeError(f"module 'unmask' has no attribute {name!r}")


__all__ = [
    "load", "ablate", "__version__", "decode", "steps", "Decoding", "linear_schedule", "pad_prompts", "create", "describe", "hookimpl", "Component",
    "register_plugin", "unregister_plugin", "registry", "SpecError", "parse_spec", "CacheManager", "Candidates", "Commit",
    "DecodeConfig", "DecodeResult", "DenoiserModel", "StepView", "StopCriterion", "StopDecision", "UnmaskPolicy",
]
