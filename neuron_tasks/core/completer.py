"""Batches the results of processed messages: one transaction per batch, not per message.

Worker threads hand over acks, retries and dead letters; this thread writes them a few
milliseconds later in one round trip. A lost connection keeps the batch for the next try,
so nothing is dropped; if the process dies first, the leases expire and the messages run
again (at-least-once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from neuron_tasks.sql import q

log = logging.getLogger(__name__)
MAX_BATCH = 500


#: A one-element JSON array appended to a message's `errors` (see `error_entry`).
ErrorEntry = list[dict[str, Any]]


def error_entry(*, attempt: int, type_name: str, message: str, traceback: str) -> ErrorEntry:
    """A one-element array to append to a message's `errors`."""
    return [{"at": time.time(), "attempt": attempt, "type": type_name, "message": message, "traceback": traceback}]


@dataclass(frozen=True, slots=True)
class RetryResult:
    """A message that failed and runs again after `delay_ms`, with its updated payload."""

    id: int
    queue_name: str
    payload: bytes
    delay_ms: int
    error: str  # "type: message", the message's last_error
    entry: ErrorEntry

    def params(self, owner: UUID) -> dict[str, Any]:
        return {"id": self.id, "queue_name": self.queue_name, "payload": self.payload, "delay_ms": self.delay_ms,
                "error": self.error, "entry": Jsonb(self.entry), "owner": owner}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that failed for good."""

    id: int
    error: str  # "type: message", the message's last_error
    entry: ErrorEntry

    def params(self, owner: UUID) -> dict[str, Any]:
        return {"id": self.id, "error": self.error, "entry": Jsonb(self.entry), "owner": owner}


@dataclass(frozen=True, slots=True)
class Deferral:
    """A message put back until a tenant or topic limit lets it run (no attempt counted)."""

    id: int
    queue_name: str
    delay_ms: int

    def params(self, owner: UUID) -> dict[str, Any]:
        return {"id": self.id, "queue_name": self.queue_name, "delay_ms": self.delay_ms, "owner": owner}


@dataclass
class Batch:
    """Results waiting to be written: acked row ids, retries, dead letters and deferrals."""

    acks: list[int] = field(default_factory=list)
    retries: list[RetryResult] = field(default_factory=list)
    nacks: list[DeadLetter] = field(default_factory=list)
    defers: list[Deferral] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.acks) + len(self.retries) + len(self.nacks) + len(self.defers)

    def prepend(self, earlier: Batch) -> None:
        """Put an unwritten batch back in front of this one."""
        self.acks[:0] = earlier.acks
        self.retries[:0] = earlier.retries
        self.nacks[:0] = earlier.nacks
        self.defers[:0] = earlier.defers

    def singles(self) -> list[Batch]:
        """One batch per result."""
        out = [Batch(acks=[a]) for a in self.acks] + [Batch(retries=[r]) for r in self.retries]
        return out + [Batch(nacks=[n]) for n in self.nacks] + [Batch(defers=[d]) for d in self.defers]

    def row_ids(self) -> list[int]:
        """Every message this batch finishes, retries, dead-letters or defers."""
        return self.acks + [r.id for r in self.retries] + [n.id for n in self.nacks] + [d.id for d in self.defers]


class Completer(threading.Thread):
    """The thread that writes a process's results in batches (see the module's docstring)."""

    def __init__(
        self,
        pool: Callable[[], ConnectionPool],
        owner: UUID,
        linger_s: float,
        on_slots_freed: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="neuron-tasks-completer", daemon=True)
        self._pool = pool
        self.owner = owner
        self.linger_s = linger_s
        self.on_slots_freed = on_slots_freed
        self._cond = threading.Condition()
        self._batch = Batch()
        self._in_flight = 0
        self._stopping = False
        self._took_slots = False

    @property
    def took_slots(self) -> bool:
        """Whether this process claimed messages holding topic slots (they are freed with results)."""
        return self._took_slots

    def slots_taken(self) -> None:
        """Called by a consumer whose claim took topic slots."""
        self._took_slots = True

    # -- called by worker threads -------------------------------------------------
    def ack(self, row_id: int) -> None:
        self._add(lambda b: b.acks.append(row_id))

    def retry(self, result: RetryResult) -> None:
        self._add(lambda b: b.retries.append(result))

    def nack(self, result: DeadLetter) -> None:
        self._add(lambda b: b.nacks.append(result))

    def defer(self, result: Deferral) -> None:
        self._add(lambda b: b.defers.append(result))

    def _add(self, put: Callable[[Batch], None]) -> None:
        with self._cond:
            put(self._batch)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._batch) + self._in_flight

    # -- lifecycle ------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.join(timeout)

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._batch and not self._stopping:
                    self._cond.wait(0.5)
                if not self._batch and self._stopping:
                    return
            if self.linger_s and not self._stopping and not self._took_slots:
                # (Topic slots free up only when written: no lingering when this process holds some.)
                # Let concurrent worker threads add to this batch.
                deadline = time.monotonic() + self.linger_s
                with self._cond:
                    while len(self._batch) < MAX_BATCH and not self._stopping:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
            with self._cond:
                batch, self._batch = self._batch, Batch()
                self._in_flight = len(batch)
            try:
                self._write(batch)
            except psycopg.OperationalError as exc:
                # The connection is gone (restart, terminated backend): keep the batch and retry.
                log.warning("could not record %d results (%s); retrying", len(batch), exc)
                with self._cond:
                    self._batch.prepend(batch)
                    self._in_flight = 0
                time.sleep(0.2)
                continue
            except Exception:
                # One bad result must not block every other: write them one by one.
                log.exception("a batch of %d results failed; writing them one by one", len(batch))
                self._write_singly(batch)
            with self._cond:
                self._in_flight = 0
            if self._took_slots and self.on_slots_freed is not None:
                self.on_slots_freed()  # consumers waiting for a free topic slot may claim again

    def _write_singly(self, batch: Batch) -> None:
        for single in batch.singles():
            try:
                self._write(single)
            except Exception:
                # Its lease will expire and the message runs again: at-least-once, never lost.
                log.exception("could not record a result (%s); its lease will expire and it runs again", single)

    def _write(self, batch: Batch) -> None:
        woken: set[str] = set()
        with self._pool().connection() as conn, conn.transaction():
            if batch.acks:
                conn.execute(q("ack"), {"ids": batch.acks, "owner": self.owner})
            if self._took_slots:  # this process claimed messages holding topic slots
                conn.execute(q("free_slots"), {"ids": batch.row_ids()})
            with conn.cursor() as cur:
                if batch.retries:
                    cur.executemany(q("retry"), [r.params(self.owner) for r in batch.retries])
                if batch.nacks:
                    cur.executemany(q("nack"), [n.params(self.owner) for n in batch.nacks])
                if batch.defers:
                    cur.executemany(q("defer"), [d.params(self.owner) for d in batch.defers])
            woken.update(r.queue_name for r in batch.retries)
            woken.update(d.queue_name for d in batch.defers)
            for queue_name in woken:
                conn.execute(q("notify"), {"queue_name": queue_name})
