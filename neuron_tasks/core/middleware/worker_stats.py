"""Counts jobs processed, failures and run time per worker process (reported by heartbeat)."""

from __future__ import annotations

import threading
import time
from typing import Any

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy

from neuron_tasks.core.keeper import Stats


class WorkerStats(Middleware):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._local = threading.local()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self._local.started = time.perf_counter()

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        started = getattr(self._local, "started", None)
        if started is None:
            return
        self._local.started = None
        self.stats.record((time.perf_counter() - started) * 1000.0, failed=exception is not None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        # Deferred by a limit, or failed before running (deadline, age): not a run.
        self._local.started = None
