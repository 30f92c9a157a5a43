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


@dataclass
class Batch:
    acks: list[int] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)
    nacks: list[dict[str, Any]] = field(default_factory=list)
    defers: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.acks) + len(self.retries) + len(self.nacks) + len(self.defers)


def error_entry(*, attempt: int, type_name: str, message: str, traceback: str) -> list[dict[str, Any]]:
    """A one-element array to append to a message's `errors`."""
    return [{"at": time.time(), "attempt": attempt, "type": type_name, "message": message, "traceback": traceback}]


class Completer(threading.Thread):
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
        self.took_slots = False  # set by the consumer when a claim took topic slots

    # -- called by worker threads -------------------------------------------------
    def ack(self, row_id: int) -> None:
        self._add(lambda b: b.acks.append(row_id))

    def retry(self, params: dict[str, Any]) -> None:
        self._add(lambda b: b.retries.append(params))

    def nack(self, params: dict[str, Any]) -> None:
        self._add(lambda b: b.nacks.append(params))

    def defer(self, params: dict[str, Any]) -> None:
        self._add(lambda b: b.defers.append(params))

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
            if self.linger_s and not self._stopping and not self.took_slots:
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
                    self._batch.acks[:0] = batch.acks
                    self._batch.retries[:0] = batch.retries
                    self._batch.nacks[:0] = batch.nacks
                    self._batch.defers[:0] = batch.defers
                    self._in_flight = 0
                time.sleep(0.2)
                continue
            except Exception:
                # One bad result must not block every other: write them one by one.
                log.exception("a batch of %d results failed; writing them one by one", len(batch))
                self._write_singly(batch)
            with self._cond:
                self._in_flight = 0
            if self.took_slots and self.on_slots_freed is not None:
                self.on_slots_freed()  # consumers waiting for a free topic slot may claim again

    def _write_singly(self, batch: Batch) -> None:
        singles = [Batch(acks=[a]) for a in batch.acks] + [Batch(retries=[r]) for r in batch.retries]
        singles += [Batch(nacks=[n]) for n in batch.nacks] + [Batch(defers=[d]) for d in batch.defers]
        for single in singles:
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
            done_ids = batch.acks + [r["id"] for r in batch.retries + batch.nacks + batch.defers]
            if self.took_slots:  # this process claimed messages holding topic slots
                conn.execute(q("free_slots"), {"ids": done_ids})
            with conn.cursor() as cur:
                if batch.retries:
                    cur.executemany(
                        q("retry"),
                        [{**r, "entry": Jsonb(r["entry"]), "owner": self.owner} for r in batch.retries],
                    )
                if batch.nacks:
                    cur.executemany(
                        q("nack"),
                        [{**n, "entry": Jsonb(n["entry"]), "owner": self.owner} for n in batch.nacks],
                    )
                if batch.defers:
                    cur.executemany(q("defer"), [{**d, "owner": self.owner} for d in batch.defers])
            woken.update(r["queue_name"] for r in batch.retries)
            woken.update(d["queue_name"] for d in batch.defers)
            for queue_name in woken:
                conn.execute(q("notify"), {"queue_name": queue_name})
