"""Dynamic batching for ``unmask serve``: requests with the same decode settings are decoded together, and
batches take turns step by step so that a short request is not stuck behind long ones.

A dispatcher thread takes the oldest waiting request, waits up to ``wait_s`` for more with the same
:class:`Settings` (up to ``max_batch``; prompts of any length), and starts the batch in a thread of its own,
up to ``max_running`` batches at once. The batches hold the model in turn, one step each (a first-come,
first-served turn passed at every step boundary), so a 16-token request sent behind long ones waits a few of
their steps, not their whole decodes. Decoding is batch-invariant, so each answer equals the request decoded
alone; sampled requests (temperature > 0) draw noise for the whole batch, so they are decoded alone. At most
``max_queue`` requests wait: beyond that :meth:`Batcher.submit` raises :class:`QueueFull` at once. The batch
decodes a step at a time (``unmask.steps``): a cancelled request (a client that went away) or one past its
deadline has its row retired between steps; it stops counting forwards after the next one, the others go on as
they were. A batch that raises is retried one request at a time, so a bad constraint fails only its own
request.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

import attrs
import torch

from unmask.core.engine import pad_prompts, steps
from unmask.core.model_info import ModelInfo
from unmask.core.types import DecodeConfig, DecodeResult

__all__ = ["Settings", "Job", "Batcher", "StepUpdate", "QueueFull", "DeadlineExceeded"]


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


class QueueFull(RuntimeError):
    """Every place in the queue is taken: the request is refused at once (HTTP 429)."""


class DeadlineExceeded(TimeoutError):
    """The request ran past its deadline (HTTP 504); its row was finished at the next step."""


@attrs.define(eq=False)
class Job:
    prompt_ids: list[int]
    settings: Settings
    on_step: Callable[[StepUpdate], None] | None = None
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    future: Future = attrs.field(factory=Future)
    queued_at: float = attrs.field(factory=time.monotonic)
    timeout_s: float = math.inf  # from queued_at: past it, the row is finished and the request fails

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.queued_at + self.timeout_s

    @property
    def done(self) -> bool:
        """Whether its row may stop: the client went away or the deadline passed."""
        return self.cancelled.is_set() or self.expired


class _Turns:
    """The model, held by one batch at a time and handed on first come, first served: a batch that passes its
    turn after a step queues behind every batch already waiting."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._queue: deque[object] = deque()

    def acquire(self) -> None:
        ticket = object()
        with self._condition:
            self._queue.append(ticket)
            while self._queue[0] is not ticket:
                self._condition.wait()

    def release(self) -> None:
        with self._condition:
            self._queue.popleft()
            self._condition.notify_all()

    def pass_turn(self) -> None:
        self.release()
        self.acquire()


class Batcher:
    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 8, wait_s: float = 0.01, max_queue: int = 64,
                 max_running: int = 4) -> None:
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("max_running", max_running)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not wait_s >= 0:
            raise ValueError(f"batch wait must be at least 0, got {wait_s}")
        self.model, self.tokenizer, self.max_batch, self.wait_s = model, tokenizer, max_batch, wait_s
        self.info = ModelInfo.of(model)
        self.max_queue, self.max_running = max_queue, max_running
        self._waiting: list[Job] = []
        self._running: set[threading.Thread] = set()
        self.rows_in_flight = 0
        self._condition = threading.Condition()
        self._turns = _Turns()
        self._closing = False
        # Every batch decoded: each row's forwards and whether its request was cancelled (for tests and logs).
        self.log: list[dict[str, list[Any]]] = []
        self._dispatcher = threading.Thread(target=self._dispatch, name="unmask-batcher", daemon=True)
        self._dispatcher.start()

    def submit(self, job: Job) -> Future:
        with self._condition:
            if self._closing:
                raise RuntimeError("the server is shutting down")
            self._drop_finished()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests wait); try again shortly")
            self._waiting.append(job)
            self._condition.notify_all()
        return job.future

    def _drop_finished(self) -> None:
        """Requests that left the queue without a decode (client gone, deadline passed) free their places."""
        for job in [job for job in self._waiting if job.done]:
            self._waiting.remove(job)
            if job.cancelled.is_set():
                job.future.cancel()
            else:
                job.future.set_exception(DeadlineExceeded("the request waited past its deadline"))

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        """Finish every request already submitted, then stop the threads."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._dispatcher.join()
        for thread in list(self._running):
            thread.join()

    def _take(self) -> list[Job] | None:
        with self._condition:
            while not self._waiting or len(self._running) >= self.max_running:
                if self._closing and not self._waiting:
                    return None
                self._condition.wait()
            first = self._waiting[0]
            solo = first.settings.temperature > 0
            while True:
                alike = [job for job in self._waiting if job.settings == first.settings]
                batch = alike[:1 if solo else self.max_batch]
                left = first.queued_at + self.wait_s - time.monotonic()
                if solo or len(batch) >= self.max_batch or left <= 0 or self._closing:
                    break
                self._condition.wait(left)
            for job in batch:
                self._waiting.remove(job)
            return batch

    def _dispatch(self) -> None:
        while (batch := self._take()) is not None:
            thread = threading.Thread(target=self._run, args=(batch,), name="unmask-batch", daemon=True)
            with self._condition:
                self._running.add(thread)
            thread.start()

    def _run(self, batch: list[Job]) -> None:
        try:
            live = []
            for job in batch:
                if job.cancelled.is_set():
                    job.future.cancel()
                elif job.expired:
                    job.future.set_exception(DeadlineExceeded("the request waited past its deadline"))
                elif job.future.set_running_or_notify_cancel():
                    live.append(job)
            self._decode_each_alone_on_failure(live)
        finally:
            with self._condition:
                self._running.discard(threading.current_thread())
                self._condition.notify_all()

    def _decode_each_alone_on_failure(self, live: list[Job]) -> None:
        if not live:
            return
        try:
            self._decode(live)
        except Exception as error:
            if len(live) == 1:
                live[0].future.set_exception(error)
                return
            for job in live:  # alone, each request succeeds or fails on its own
                try:
                    self._decode([job])
                except Exception as alone:
                    job.future.set_exception(alone)

    def _decode(self, jobs: list[Job]) -> None:
        """Decode the batch a step at a time (``unmask.steps``), passing the model's turn after each step and
        retiring the rows whose client went away or whose deadline passed."""
        settings = jobs[0].settings
        input_ids, attention_mask = pad_prompts([job.prompt_ids for job in jobs], self.model.eos_token_id)
        device = getattr(self.model, "device", "cpu")
        config = DecodeConfig(gen_length=settings.gen_length, block_length=settings.block_length,
                              temperature=settings.temperature, seed=settings.seed)
        commit_step = torch.full((len(jobs), settings.gen_length), -1, dtype=torch.long)
        retired: set[int] = set()
        self._turns.acquire()
        self.rows_in_flight += len(jobs)
        try:
            decoding = steps(self.model, input_ids.to(device), attention_mask=attention_mask.to(device),
                             config=config, policy=settings.policy, stop=settings.stop, cache=settings.cache,
                             constraint=None if settings.constraint == "none" else settings.constraint,
                             tokenizer=self.tokenizer)
            for step, view in enumerate(decoding, start=1):
                # (a block model's canvas runs on past gen_length)
                columns = view.answer_starts[:, None] + torch.arange(settings.gen_length, device=view.x.device)
                answer = view.x.gather(1, columns).cpu()
                commit_step[(answer != view.mask_token_id) & (commit_step < 0)] = step - 1
                for row, job in enumerate(jobs):
                    if job.done and row not in retired:
                        retired.add(row)
                        decoding.retire([row])
                    elif job.on_step is not None and not job.done:
                        job.on_step(StepUpdate(tokens=answer[row].tolist(), commit_step=commit_step[row].tolist(),
                                               step=step, nfe=int(view.nfe[row])))
                self._turns.pass_turn()  # the next batch waiting runs its step before this one's next
        finally:
            self.rows_in_flight -= len(jobs)
            self._turns.release()
        result = decoding.result
        self.log.append({"forwards": result.nfe.tolist(), "cancelled": [job.cancelled.is_set() for job in jobs]})
        for row, job in enumerate(jobs):
            if job.future.cancelled():
                continue
            if row in retired and not job.cancelled.is_set():  # cut at its deadline
                job.future.set_exception(DeadlineExceeded(f"the request ran past its deadline of {job.timeout_s:g} s"))
            else:
                job.future.set_result(_row(result, row, commit_step[row]))


def _row(result: DecodeResult, row: int, commit_step: torch.Tensor) -> dict[str, Any]:
    return {"tokens": result.tokens[row].tolist(), "answer_length": int(result.answer_lengths[row]),
            "nfe": int(result.nfe[row]), "commit_step": commit_step.tolist(), "components": result.components}

