"""Dynamic batching for ``unmask serve``: requests with the same decode settings are decoded together.

One worker thread owns the model. It takes the oldest waiting request, waits up to ``wait_s`` for more
with the same :class:`Settings` (up to ``max_batch``; for a block-causal model also the same prompt length
modulo its block size), and decodes them in one batch. Decoding is
batch-invariant, so each answer equals the request decoded alone; sampled requests (temperature > 0) draw
noise for the whole batch, so they are decoded alone. A cancelled request (a client that went away) is
finished by a stop criterion at the next step: its row stops counting forwards, the others go on as they
were. A batch that raises is retried one request at a time, so a bad constraint fails only its own request.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

import attrs
import torch

from unmask.core.engine import decode, pad_prompts
from unmask.core.types import DecodeConfig, DecodeResult, StepView, StopDecision

__all__ = ["Settings", "Job", "Batcher", "StepUpdate"]


@attrs.frozen
class Settings:
    """What a batch shares: the components (as specs) and the canvas."""

    policy: str = "topk"
    stop: str = "none"
    cache: str = "none"
    constraint: str = "none"
    gen_length: int = 64
    block_length: int = 32
    temperature: float = 0.0
    seed: int = 0


@attrs.frozen
class StepUpdate:
    """A request's canvas after one step: answer tokens (mask where open) and the step that wrote each."""

    tokens: list[int]
    commit_step: list[int]  # -1: still masked
    step: int
    nfe: int


@attrs.define(eq=False)
class Job:
    prompt_ids: list[int]
    settings: Settings
    on_step: Callable[[StepUpdate], None] | None = None
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    future: Future = attrs.field(factory=Future)
    queued_at: float = attrs.field(factory=time.monotonic)


class _Cancelled:
    """A stop criterion: the rows whose request was cancelled are done."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def check(self, view: StepView) -> StopDecision:
        flags = [job.cancelled.is_set() for job in self.jobs]
        return StopDecision(done=torch.tensor(flags, dtype=torch.bool, device=view.x.device))


class Batcher:
    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 8, wait_s: float = 0.01) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not wait_s >= 0:
            raise ValueError(f"batch wait must be at least 0, got {wait_s}")
        self.model, self.tokenizer, self.max_batch, self.wait_s = model, tokenizer, max_batch, wait_s
        self._waiting: list[Job] = []
        self._condition = threading.Condition()
        self._closing = False
        # Every batch decoded: each row's forwards and whether its request was cancelled (for tests and logs).
        self.log: list[dict[str, list[Any]]] = []
        self._worker = threading.Thread(target=self._run, name="unmask-batcher", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Future:
        with self._condition:
            if self._closing:
                raise RuntimeError("the server is shutting down")
            self._waiting.append(job)
            self._condition.notify()
        return job.future

    def close(self) -> None:
        """Finish every request already submitted, then stop the worker."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._worker.join()

    def _take(self) -> list[Job] | None:
        with self._condition:
            while not self._waiting:
                if self._closing:
                    return None
                self._condition.wait()
            first = self._waiting[0]
            solo = first.settings.temperature > 0
            while True:
                alike = [job for job in self._waiting if self._key(job) == self._key(first)]
                batch = alike[:1 if solo else self.max_batch]
                left = first.queued_at + self.wait_s - time.monotonic()
                if solo or len(batch) >= self.max_batch or left <= 0 or self._closing:
                    break
                self._condition.wait(left)
            for job in batch:
                self._waiting.remove(job)
            return batch

    def _key(self, job: Job) -> tuple[Any, ...]:
        """What jobs of one batch share: their settings, and for a block-causal model their prompt length
        modulo its block size (the engine would decode other lengths as batches of their own)."""
        block_size = getattr(self.model, "block_size", None)
        return job.settings, len(job.prompt_ids) % block_size if block_size else 0

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [job for job in batch if not job.cancelled.is_set()]
            for job in batch:
                if job.cancelled.is_set():
                    job.future.cancel()
            if not live:
                continue
            try:
                self._decode(live)
            except Exception as error:
                if len(live) == 1:
                    live[0].future.set_exception(error)
                    continue
                for job in live:  # alone, each request succeeds or fails on its own
                    try:
                        self._decode([job])
                    except Exception as alone:
                        job.future.set_exception(alone)

    def _decode(self, jobs: list[Job]) -> None:
        settings = jobs[0].settings
        input_ids, attention_mask = pad_prompts([job.prompt_ids for job in jobs], self.model.eos_token_id)
        device = getattr(self.model, "device", "cpu")
        config = DecodeConfig(gen_length=settings.gen_length, block_length=settings.block_length,
                              temperature=settings.temperature, seed=settings.seed)
        commit_step = torch.full((len(jobs), settings.gen_length), -1, dtype=torch.long)
        steps = [0]

        def observe(view: StepView) -> None:
            answer = view.x[:, view.gen_start:view.gen_start + settings.gen_length].cpu()  # (a block model's runs on)
            fresh = (answer != view.mask_token_id) & (commit_step < 0)
            commit_step[fresh] = steps[0]
            steps[0] += 1
            for row, job in enumerate(jobs):
                if job.on_step is not None and not job.cancelled.is_set():
                    job.on_step(StepUpdate(tokens=answer[row].tolist(), commit_step=commit_step[row].tolist(),
                                           step=steps[0], nfe=int(view.nfe[row])))

        stops = [settings.stop, _Cancelled(jobs)] if settings.stop != "none" else [_Cancelled(jobs)]
        constraint = None if settings.constraint == "none" else settings.constraint
        result = decode(self.model, input_ids.to(device), attention_mask=attention_mask.to(device), config=config,
                        policy=settings.policy, stop=stops, cache=settings.cache, constraint=constraint,
                        tokenizer=self.tokenizer, on_step=observe)
        self.log.append({"forwards": result.nfe.tolist(), "cancelled": [job.cancelled.is_set() for job in jobs]})
        for row, job in enumerate(jobs):
            if not job.future.cancelled():
                job.future.set_result(_row(result, row, commit_step[row]))


def _row(result: DecodeResult, row: int, commit_step: torch.Tensor) -> dict[str, Any]:
    return {"tokens": result.tokens[row].tolist(), "answer_length": int(result.answer_lengths[row]),
            "nfe": int(result.nfe[row]), "commit_step": commit_step.tolist(), "components": result.components}

