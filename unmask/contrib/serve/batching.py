"""Dynamic batching for ``unmask serve``: requests with the same decode settings are decoded together, and
batches take turns step by step so that a short request is not stuck behind long ones.

A dispatcher thread takes the oldest waiting request, waits up to ``wait_s`` for more with the same
:class:`Settings` (up to ``max_batch``; prompts of any length), and starts the batch in a thread of its own,
up to ``max_running`` batches at once. The batches hold the model in turn, one step each (a first-come,
first-served turn passed at every step boundary), so a 16-token request sent behind long ones waits a few of
their steps, not their whole decodes, and each request is answered as soon as its own row is finished. With
``join_running``, a running batch takes the requests with its settings that arrive while it decodes: they
join it at its next block boundary (``Decoding.add``) while it has fewer than ``max_batch`` rows still open
(and has held fewer than twice that, its canvas at most twice as wide as at its start: bounded cost).
Decoding is batch-invariant, so each answer equals the request decoded alone; sampled requests
(temperature > 0) draw noise for the whole batch, so they are decoded alone, and no row joins a decode whose
components read its clock. At most ``max_queue`` requests wait: beyond that :meth:`Batcher.submit` raises
:class:`QueueFull` at once. The batch decodes a step at a time (``unmask.steps``): a cancelled request (a
client that went away) or one past its deadline has its row retired between steps; it stops counting forwards
after the next one, the others go on as they were. A batch that raises is retried one request at a time, so a
bad constraint fails only its own request.
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
                 max_running: int = 4, join_running: bool = False) -> None:
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("max_running", max_running)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not wait_s >= 0:
            raise ValueError(f"batch wait must be at least 0, got {wait_s}")
        self.model, self.tokenizer, self.max_batch, self.wait_s = model, tokenizer, max_batch, wait_s
        self.info = ModelInfo.of(model)
        self.max_queue, self.max_running, self.join_running = max_queue, max_running, join_running
        self._waiting: list[Job] = []
        self._running: set[threading.Thread] = set()
        self.rows_in_flight = 0
        self._condition = threading.Condition()
        self._turns = _Turns()
        self._closing = False
        # Every batch decoded (see _decode).
        self.log: list[dict[str, Any]] = []
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
            self._decode(live, joins=self.join_running)
        except _BatchFailed as failed:
            if failed.rows == 1:
                failed.jobs[0].future.set_exception(failed.error)
                return
            for job in failed.jobs:  # alone, each request succeeds or fails on its own
                try:
                    self._decode([job], joins=False)
                except _BatchFailed as alone:
                    job.future.set_exception(alone.error)

    def _decode(self, jobs: list[Job], *, joins: bool) -> None:
        """Decode the batch a step at a time (``unmask.steps``), passing the model's turn after each step:
        requests with the same settings that arrive meanwhile join it at its next block boundary (with
        ``joins``, while it has fewer than ``max_batch`` rows still decoding), a finished row's request is
        answered at once, and the rows whose client went away or whose deadline passed are retired. Raises
        :class:`_BatchFailed` with the requests not answered yet."""
        settings = jobs[0].settings
        rows = [_Row.of(job, settings.gen_length) for job in jobs]  # by row of the batch
        open_ = set(range(len(rows)))  # rows whose request is not answered yet
        # Each row's forwards and whether its request was cancelled, as each is answered (for tests and logs).
        self.log.append(log := {"forwards": [0] * len(rows), "cancelled": [False] * len(rows), "joined": 0})
        self._turns.acquire()
        self.rows_in_flight += len(jobs)
        try:
            decoding = self._start(jobs)
            width = None
            for view in decoding:
                self._follow(view, rows, open_, decoding)
                for row in open_ & set(decoding.finished()):
                    self._answer(rows[row], decoding, row, open_, log)
                # Rows joined stay in the batch (not fed once finished) and the canvas grows for them: a batch
                # takes them while it has held fewer than 2 x max_batch rows and its canvas is at most twice
                # as wide as at its start, so a step costs at most a few times a full batch's.
                width = width or view.x.shape[1]
                if joins and decoding.joinable and len(rows) < 2 * self.max_batch and view.x.shape[1] <= 2 * width:
                    self._join(decoding, settings, rows, open_, log)
                self._turns.pass_turn()  # the next batch waiting runs its step before this one's next
            for row in sorted(open_):
                self._answer(rows[row], decoding, row, open_, log)
        except Exception as error:
            self.log.remove(log)  # (the log holds the batches decoded; its requests are retried alone)
            raise _BatchFailed(error, [rows[row].job for row in sorted(open_)], len(rows)) from error
        finally:
            self.rows_in_flight -= len(open_)
            self._turns.release()

    def _answer(self, row: _Row, decoding: Any, index: int, open_: set[int], log: dict[str, Any]) -> None:
        """A finished row's request answered (logged and no longer in flight first: a client that asks at once
        sees it so)."""
        result = decoding.rows([index])
        log["forwards"][index], log["cancelled"][index] = int(result.nfe[0]), row.job.cancelled.is_set()
        open_.discard(index)
        self.rows_in_flight -= 1
        row.answer(result)

    def _start(self, jobs: list[Job]) -> Any:
        """The batch's decode, a step at a time."""
        settings = jobs[0].settings
        input_ids, attention_mask = pad_prompts([job.prompt_ids for job in jobs], self.model.eos_token_id)
        device = getattr(self.model, "device", "cpu")
        config = DecodeConfig(gen_length=settings.gen_length, block_length=settings.block_length,
                              temperature=settings.temperature, seed=settings.seed)
        return steps(self.model, input_ids.to(device), attention_mask=attention_mask.to(device), config=config,
                     policy=settings.policy, stop=settings.stop, cache=settings.cache,
                     constraint=None if settings.constraint == "none" else settings.constraint,
                     tokenizer=self.tokenizer)

    @staticmethod
    def _follow(view: Any, rows: list[_Row], open_: set[int], decoding: Any) -> None:
        """After a step: each open row's answer so far to its request's stream; rows to retire retired."""
        gen_length = len(rows[0].commit_step)
        columns = view.answer_starts[:, None] + torch.arange(gen_length, device=view.x.device)
        answer = view.x.gather(1, columns).cpu()  # (a block model's canvas runs on past gen_length)
        for index in sorted(open_):
            if index >= len(answer):  # (waiting to join)
                continue
            row = rows[index]
            row.first_step = view.global_step if row.first_step is None else row.first_step
            step = view.global_step - row.first_step
            row.commit_step[(answer[index] != view.mask_token_id) & (row.commit_step < 0)] = step
            if row.job.done and not row.retired:
                row.retired = True
                decoding.retire([index])
            elif row.job.on_step is not None and not row.job.done:
                row.job.on_step(StepUpdate(tokens=answer[index].tolist(), commit_step=row.commit_step.tolist(),
                                           step=step + 1, nfe=int(view.nfe[index])))

    def _join(self, decoding: Any, settings: Settings, rows: list[_Row], open_: set[int], log: dict[str, Any]) -> None:
        """Waiting requests with these settings join the running decode, up to ``max_batch`` open rows."""
        with self._condition:
            room = min(self.max_batch - len(open_), 2 * self.max_batch - len(rows))
            joining = [job for job in self._waiting if job.settings == settings][:max(room, 0)]
            for job in joining:
                self._waiting.remove(job)
        live = [job for job in joining if job.future.set_running_or_notify_cancel()]
        if live:
            open_.update(decoding.add([job.prompt_ids for job in live]))
            rows += [_Row.of(job, settings.gen_length) for job in live]
            self.rows_in_flight += len(live)
            log["forwards"] += [0] * len(live)
            log["cancelled"] += [False] * len(live)
            log["joined"] += len(live)


class _BatchFailed(Exception):
    """A batch's decode raised: the error, the requests it had not answered, how many rows it had."""

    def __init__(self, error: Exception, jobs: list[Job], rows: int) -> None:
        super().__init__(str(error))
        self.error, self.jobs, self.rows = error, jobs, rows


@attrs.define(eq=False)
class _Row:
    """A request's row in a running batch."""

    job: Job
    commit_step: torch.Tensor  # (gen_length,): the step (from the row's first) that wrote each answer token
    first_step: int | None = None  # the batch's step the row joined at
    retired: bool = False

    @classmethod
    def of(cls, job: Job, gen_length: int) -> _Row:
        return cls(job, torch.full((gen_length,), -1, dtype=torch.long))

    def answer(self, result: DecodeResult) -> None:
        """Answer the request with its row's result (a one-row ``DecodeResult``)."""
        if self.job.future.cancelled():
            return
        if self.retired and not self.job.cancelled.is_set():  # cut at its deadline
            self.job.future.set_exception(DeadlineExceeded(
                f"the request ran past its deadline of {self.job.timeout_s:g} s"))
        else:
            self.job.future.set_result({
                "tokens": result.tokens[0].tolist(), "answer_length": int(result.answer_lengths[0]),
                "nfe": int(result.nfe[0]), "commit_step": self.commit_step.tolist(), "components": result.components})

