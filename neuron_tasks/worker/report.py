"""What a supervised worker process tells its supervisor, one short line at a time on a pipe:
`ready` once its Dramatiq worker has started, `start <row id> <time limit ms>` before each job
and `end <row id>` after it. The supervisor restarts a child that dies after it was ready at
once (one that dies before backs off), and replaces a child whose job runs past its time limit
plus `hard_timeout_grace_s` (stuck in C code, where Dramatiq's time limit cannot interrupt it).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import TimeLimit

from neuron_tasks.core.middleware.context import claimed

log = logging.getLogger(__name__)

#: The environment variable that gives a child the file descriptor of its report pipe.
REPORT_FD_ENV = "NEURON_TASKS_WORKER_REPORT_FD"


class Reporter:
    """The write end of the report pipe (each line is one write: atomic, whatever the thread)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._broken = threading.Event()

    @classmethod
    def from_env(cls) -> Reporter | None:
        """The pipe the supervisor passed (and forget it, so that processes this one starts
        do not inherit it)."""
        value = os.environ.pop(REPORT_FD_ENV, None)
        if not value:
            return None
        try:
            fd = int(value)
            os.set_inheritable(fd, False)
        except (ValueError, OSError) as exc:
            log.warning("no report pipe to the supervisor (%s=%r: %s); it cannot see this process's jobs",
                        REPORT_FD_ENV, value, exc)
            return None
        return cls(fd)

    def send(self, line: str) -> None:
        if self._broken.is_set():
            return
        try:
            os.write(self.fd, line.encode() + b"\n")
        except OSError as exc:
            self._broken.set()
            log.warning("cannot report to the supervisor any more (%s); it cannot see this process's jobs", exc)

    def ready(self) -> None:
        self.send("ready")

    def close(self) -> None:
        self._broken.set()
        try:
            os.close(self.fd)
        except OSError:
            pass


class JobReporter(Middleware):
    """Reports each job's start (with its time limit) and end to the supervisor."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        proxy = claimed(message)
        if proxy is not None:
            self.reporter.send(f"start {proxy.row_id} {time_limit_ms(broker, message)}")

    def after_process_message(self, broker: Broker, message: MessageProxy, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        proxy = claimed(message)
        if proxy is not None:
            self.reporter.send(f"end {proxy.row_id}")

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message)


def time_limit_ms(broker: Broker, message: MessageProxy) -> int:
    """The limit Dramatiq's TimeLimit applies to this message (0: none, no TimeLimit middleware):
    the message's `time_limit` option, else its actor's, else the middleware's default."""
    limiter = next((m for m in broker.middleware if isinstance(m, TimeLimit)), None)
    if limiter is None:
        return 0
    actor = broker.actors.get(message.actor_name)
    default = actor.options.get("time_limit", limiter.time_limit) if actor is not None else limiter.time_limit
    limit = message.options.get("time_limit") or default
    try:
        return max(int(limit), 0)
    except (TypeError, ValueError):
        return 0
