"""What an operator of ``unmask serve`` watches, in Prometheus' text format at ``GET /metrics``
(prometheus-client): the queue, the rows being decoded, answer tokens and forwards, answer tokens per second
over the last minute, and requests refused by reason."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

__all__ = ["Metrics", "REASONS"]

REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "too_large", 415: "not_json",
           429: "queue_full", 500: "internal_error", 503: "shutting_down", 504: "timeout"}
WINDOW_S = 60.0


class Metrics:
    def __init__(self, batcher: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()  # one per server: tests run several in one process
        Gauge("unmask_queue_depth", "Requests waiting for a batch", registry=self.registry).set_function(
            lambda: batcher.queue_depth)
        Gauge("unmask_rows_in_flight", "Rows being decoded", registry=self.registry).set_function(
            lambda: batcher.rows_in_flight)
        Gauge("unmask_tokens_per_second", f"Answer tokens per second over the last {WINDOW_S:g} s",
              registry=self.registry).set_function(self._rate)
        self.tokens = Counter("unmask_completion_tokens", "Answer tokens returned", registry=self.registry)
        self.forwards = Counter("unmask_forwards", "Model forwards of finished requests", registry=self.registry)
        self.requests = Counter("unmask_requests_completed", "Requests answered", registry=self.registry)
        self.refused = Counter("unmask_requests_rejected", "Requests refused, by reason", ["reason"],
                               registry=self.registry)
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def completed(self, usage: dict[str, int]) -> None:
        self.requests.inc()
        self.tokens.inc(usage["completion_tokens"])
        self.forwards.inc(usage["forwards"])
        with self._lock:
            self._recent.append((time.monotonic(), usage["completion_tokens"]))

    def rejected(self, status: int) -> None:
        self.refused.labels(REASONS.get(status, str(status))).inc()

    def _rate(self) -> float:
        with self._lock:
            while self._recent and self._recent[0][0] < time.monotonic() - WINDOW_S:
                self._recent.popleft()
            return sum(tokens for _, tokens in self._recent) / WINDOW_S

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
