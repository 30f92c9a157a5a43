"""Dramatiq's broker test API on Postgres: join, flush, flush_all, dead_letters.

Mixed into PostgresBroker; it reads the database only through named statements.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from dramatiq.broker import MessageProxy
from dramatiq.errors import QueueJoinTimeout
from dramatiq.message import Message
from psycopg.rows import RowFactory, class_row, scalar_row

from neuron_tasks.errors import DeadLettered

log = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class DeadLetterPayload:
    """A row of the `dead_letter_payloads` query."""

    id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetterError:
    """A row of the `dead_letter_errors_since` query: a dead letter's newest error entry."""

    message_id: str
    error: dict[str, Any] | None


class BrokerTestAPI:
    """join(queue, timeout=, fail_fast=), flush, flush_all, dead_letters (as Dramatiq's tests expect)."""

    queues: set[str]
    _epoch: datetime
    _depth: dict[str, tuple[int, float]]
    _depth_lock: threading.Lock

    def _fetch(self, name: str, params: Mapping[str, Any], row: RowFactory[R], *, what: str) -> list[R]:
        raise NotImplementedError

    def _run(self, name: str, params: Mapping[str, Any], *, what: str) -> None:
        raise NotImplementedError

    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue, dead letters included."""
        self._run("flush_queues", {"queues": [queue_name]}, what="flush")

    def flush_all(self) -> None:
        """Drop every message of every declared queue, dead letters included."""
        self._run("flush_queues", {"queues": sorted(self.queues)}, what="flush_all")
        self._epoch = datetime.now(UTC)
        with self._depth_lock:
            self._depth.clear()

    @property
    def dead_letters(self) -> list[MessageProxy]:
        """Dead-lettered messages of the declared queues (decodable ones)."""
        rows = self._fetch("dead_letter_payloads", {"queues": sorted(self.queues)}, class_row(DeadLetterPayload),
                           what="dead letters")
        found: list[MessageProxy] = []
        for row in rows:
            try:
                found.append(MessageProxy(Message.decode(bytes(row.payload))))
            except Exception:
                log.warning("dead letter %s has an undecodable payload", row.id)
        return found

    def join(
        self,
        queue_name: str,
        *,
        timeout: int | None = None,
        fail_fast: bool | None = True,
        interval: int = 20,
    ) -> None:
        """Wait until no message of the queue is pending, retrying or running.

        With `fail_fast`, raise the exception of a message dead-lettered on this queue since
        the broker was created (or flushed): the actor's exception type and message are
        rebuilt from what was stored, not held in memory.

        Raises:
          QueueJoinTimeout: when `timeout` (milliseconds) elapses first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000.0
        while True:
            live = int(self._fetch("live_count", {"queue_name": queue_name}, scalar_row, what="join")[0])
            if live == 0:
                if fail_fast:
                    self._raise_dead_letter(queue_name)
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(interval / 1000.0)

    def _raise_dead_letter(self, queue_name: str) -> None:
        rows = self._fetch("dead_letter_errors_since", {"queue_name": queue_name, "since": self._epoch},
                           class_row(DeadLetterError), what="join")
        for row in rows:
            entry = row.error or {}
            raise rebuild_exception(str(entry.get("type") or ""), str(entry.get("message") or "")) from None


def rebuild_exception(type_name: str, message: str) -> BaseException:
    """An instance of the named exception class with its message, or DeadLettered."""
    module_name, _, qualname = type_name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name or "builtins")
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj(message)
    except Exception:
        pass
    return DeadLettered(f"{type_name}: {message}")
