"""Prometheus metrics of a worker process (prometheus-client; multi-process safe).

Under `neuron-tasks worker` every child writes to PROMETHEUS_MULTIPROC_DIR and the supervisor
serves the sum on /metrics together with queue depth read from Postgres at scrape time.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy

from neuron_tasks.core.middleware.context import claimed

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        labels = ("queue_name", "actor_name")
        self.total = Counter("neuron_tasks_messages", "Messages processed (any outcome).", labels)
        self.errors = Counter("neuron_tasks_message_errors", "Messages whose actor raised.", labels)
        self.retries = Counter("neuron_tasks_message_retries", "Messages scheduled for a retry.", labels)
        self.dead = Counter("neuron_tasks_messages_dead_lettered", "Messages moved to the dead letters.", labels)
        self.in_progress = Gauge("neuron_tasks_messages_in_progress", "Messages running now.", labels,
                                 multiprocess_mode="livesum")
        self.duration = Histogram("neuron_tasks_message_duration_seconds", "Actor run time.", labels,
                                  buckets=LATENCY_BUCKETS)
        self.wait = Histogram("neuron_tasks_message_wait_seconds", "Time from enqueue to start.", labels,
                              buckets=LATENCY_BUCKETS)
        self.throttled = Counter("neuron_tasks_messages_throttled", "Messages deferred by a tenant or topic limit.",
                                 ("tenant", "topic"))


@cache
def metrics() -> _Metrics:
    """One set of metric objects per process (the registry refuses duplicates)."""
    return _Metrics()


class _Children:
    """The labelled metrics of one (queue, actor), looked up once (`labels()` locks and checks on
    every call)."""

    __slots__ = ("duration", "in_progress", "total", "wait")

    def __init__(self, m: _Metrics, labels: tuple[str, str]) -> None:
        self.in_progress = m.in_progress.labels(*labels)
        self.wait = m.wait.labels(*labels)
        self.duration = m.duration.labels(*labels)
        self.total = m.total.labels(*labels)


class Metrics(Middleware):
    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._children: dict[tuple[str, str], _Children] = {}

    def _of(self, message: MessageProxy) -> _Children:
        labels = (message.queue_name, message.actor_name)
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = _Children(metrics(), labels)
        return children

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        children = self._of(message)
        children.in_progress.inc()
        self._started[message.message_id] = time.perf_counter()
        children.wait.observe(max(time.time() - message.message_timestamp / 1000.0, 0.0))

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        children = self._of(message)
        started = self._started.pop(message.message_id, None)
        if started is not None:
            children.in_progress.dec()
            children.duration.observe(time.perf_counter() - started)
        children.total.inc()
        if exception is not None:
            metrics().errors.labels(message.queue_name, message.actor_name).inc()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        m = metrics()
        if self._started.pop(message.message_id, None) is not None:
            m.in_progress.labels(message.queue_name, message.actor_name).dec()
        proxy = claimed(message)
        if proxy is not None and proxy.deferred is not None:
            m.throttled.labels(message.options.get("tenant") or "", message.options.get("topic") or "").inc()

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        proxy = claimed(message)
        if proxy is not None and proxy.scheduled_retry is not None:
            metrics().retries.labels(message.queue_name, message.actor_name).inc()

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        metrics().dead.labels(message.queue_name, message.actor_name).inc()
