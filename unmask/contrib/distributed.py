"""Data-parallel runs under ``torchrun`` or ``accelerate launch``: which process this is, and how work and
results move between processes.

Both launchers set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a run is one process and none of
this does anything. Samples are split into contiguous shards (rank 0 takes the first), each process decodes
its shard, and the per-sample results are gathered, so rank 0 sees exactly what one process would have
computed; only rank 0 prints and writes. Processes talk over gloo on the CPU and nccl on GPUs.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, TypeVar

from attrs import frozen

__all__ = ["Ranks", "ranks", "start", "finish", "shard", "gather", "barrier", "on_main"]

T = TypeVar("T")


@frozen
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that prints and writes."""
        return self.rank == 0


def ranks() -> Ranks:
    """This process's place, from the launcher's environment (one process when there is none)."""
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = os.environ.get(name)
        if text is None:
            continue
        if not text.isdigit():
            raise ValueError(f"environment variable {name}={text!r} must be a non-negative integer")
        values[name] = int(text)
    world_size = values.get("WORLD_SIZE", 1)
    rank = values.get("RANK", 0)
    if world_size < 1 or rank >= world_size:
        raise ValueError(f"RANK={rank} must be below WORLD_SIZE={world_size}")
    return Ranks(rank=rank, world_size=world_size, local_rank=values.get("LOCAL_RANK", rank))


def start(device: str = "cpu") -> str:
    """Join the process group of a data-parallel run (once) and return this process's device: there any
    ``cuda`` device becomes ``cuda:LOCAL_RANK`` (one GPU per process, as the launchers intend)."""
    place = ranks()
    if place.world_size == 1:
        return device
    import torch.distributed as dist

    if str(device).startswith("cuda"):
        device = f"cuda:{place.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", rank=place.rank,
                                world_size=place.world_size)
    return device


def finish() -> None:
    """Leave the process group once every process is done. A process that exits while another still writes
    can make that one's teardown abort ("terminate called without an active exception")."""
    if ranks().world_size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(items: Sequence[T], place: Ranks | None = None) -> Sequence[T]:
    """This process's contiguous part of ``items`` (sizes differ by at most one, lower ranks first)."""
    place = place or ranks()
    size, extra = divmod(len(items), place.world_size)
    begin = place.rank * size + min(place.rank, extra)
    return items[begin:begin + size + (place.rank < extra)]


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order, on every process (``[value]`` in a one-process run)."""
    if ranks().world_size == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    if ranks().world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def on_main(function: Any) -> Any:
    """``function()`` run by rank 0 alone, its result (or its exception) handed to every process: for what
    one process must do, like creating an output directory."""
    result, error = None, None
    if ranks().main:
        try:
            result = function()
        except Exception as caught:  # re-raised on every process, so that none waits for the others
            error = caught
    result, error = gather((result, error))[0]
    if error is not None:
        raise error
    return result
