"""The lm-evaluation-harness bridge (``unmask[eval]``): the model class ``unmask``.

``UnmaskLM`` answers ``generate_until`` requests with :func:`unmask.decode` in batches, cut at the first of
the request's ``until`` strings. ``register()`` makes it lm-eval's model ``unmask``; ``unmask lm-eval ARGS``
does that and runs lm-eval's own command line with ``ARGS`` unchanged. Offline tasks for it:
:mod:`unmask.contrib.eval.harness_tasks`.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Sequence

import torch
from lm_eval.api.model import LM

from unmask.contrib import distributed

__all__ = ["UnmaskLM", "register", "run_harness"]


class UnmaskLM(LM):
    """lm-eval's view of a dLLM decoded by unmask. Model args: ``pretrained`` (a directory or a registered
    model name such as ``reference``), ``policy``, ``stop``, ``cache``, ``constraint`` (specs), ``gen_length``,
    ``block_length``, ``steps``, ``temperature``, ``dtype``, ``device``, ``batch_size``, ``chat`` (the
    tokenizer's chat template; default: if it has one), ``trust_remote_code``."""

    def __init__(self, pretrained: str = "reference", policy: str = "topk", stop: str = "none", cache: str = "none",
                 constraint: str = "none", gen_length: int = 256, block_length: int = 32, steps: int | None = None, temperature: float = 0.0,
                 dtype: str = "float32", device: str = "cpu", batch_size: int | str = 8, chat: bool | None = None,
                 trust_remote_code: bool = False, **unknown: Any) -> None:
        super().__init__()
        from unmask.contrib.eval.runner import check_components
        from unmask.contrib.models.transformers import load
        from unmask.core.types import DecodeConfig

        if unknown:
            raise ValueError(f"model_args: unknown argument(s) {', '.join(sorted(unknown))} for the unmask model")
        # lm-eval reads "none" in model_args as None, and --batch_size as a string.
        stop, cache, constraint = stop or "none", cache or "none", constraint or "none"
        batch_size = int(batch_size) if isinstance(batch_size, str) and batch_size.isdigit() else batch_size
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (not 'auto'), got {batch_size!r}")
        check_components([policy], [stop], [cache], constraints=[constraint])
        self.config = DecodeConfig(gen_length=gen_length, block_length=min(block_length, gen_length), steps=steps,
                                   temperature=temperature)
        self.components = {"policy": policy, "stop": stop, "cache": cache,
                           **({} if constraint == "none" else {"constraint": constraint})}
        self.batch_size, self.chat = batch_size, chat
        # Under torchrun or accelerate launch lm-eval shards the requests by rank and gathers through us.
        device = distributed.start(device)
        place = distributed.ranks()
        self._rank, self._world_size, self._device = place.rank, place.world_size, torch.device(device)
        self.model, self.tokenizer = load(pretrained, dtype=dtype, device=device, trust_remote_code=trust_remote_code)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> UnmaskLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None) -> UnmaskLM:
        """``--model_args`` win over lm-eval's ``--device`` and ``--batch_size``; lm-eval's default device
        (``cuda:0``) falls back to the CPU where there is no GPU, as its own transformers model does."""
        extra = {k: v for k, v in (additional_config or {}).items() if k in ("device", "batch_size") and v is not None}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(f"device {extra['device']!r} is not available; decoding on the CPU", stacklevel=2)
            extra["device"] = "cpu"
        return cls(**{**extra, **arg_dict})

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        from unmask.contrib.models.transformers import decode_text

        answers: list[str] = []
        bar = tqdm(total=len(requests), desc="unmask", disable=disable_tqdm)
        for start in range(0, len(requests), self.batch_size):
            batch = [request.args for request in requests[start:start + self.batch_size]]
            texts, _ = decode_text(self.model, self.tokenizer, [context for context, _ in batch], chat=self.chat,
                                   config=self.config, **self.components)
            answers += [_cut(text, options.get("until")) for text, (_, options) in zip(texts, batch)]
            bar.update(len(batch))
        bar.close()
        return answers

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor``, concatenated in rank order (stacked when 0-d)."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        gathered = distributed.gather(obj)
        return gathered if self.rank == dst else None

    def barrier(self) -> None:
        distributed.barrier()

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError("the unmask model answers generate_until tasks only; loglikelihood tasks "
                                  "(multiple choice, perplexity) need a likelihood estimate it does not make")

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("the unmask model answers generate_until tasks only (no rolling loglikelihood)")


def _cut(text: str, until: Any) -> str:
    """``text`` up to the first of the ``until`` strings (lm-eval's stop sequences)."""
    for stop in [until] if isinstance(until, str) else until or []:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def register() -> None:
    """Make ``UnmaskLM`` lm-eval's model ``unmask`` (lm-eval has no plug-in discovery for models)."""
    import lm_eval.models  # noqa: F401  (lm-eval fills its registry lazily only while it is empty)
    from lm_eval.api.registry import MODEL_REGISTRY, register_model

    if "unmask" not in MODEL_REGISTRY:
        register_model("unmask")(UnmaskLM)


def run_harness(arguments: Sequence[str]) -> int:
    """lm-eval's command line on ``arguments``, with the model ``unmask`` registered first."""
    from lm_eval.__main__ import cli_evaluate

    register()
    saved, sys.argv = sys.argv, ["lm-eval", *arguments]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
