"""The consumer Dramatiq's worker iterates: batched claims, woken by NOTIFY."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from psycopg.rows import class_row

from neuron_tasks import db
from neuron_tasks.core.completer import DeadLetter, Deferral, ErrorEntry, RetryResult, error_entry
from neuron_tasks.sql import q

if TYPE_CHECKING:
    from neuron_tasks.core.broker import PostgresBroker

log = logging.getLogger(__name__)


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, slots=True)
class Claim:
    """A message this process claimed: the columns the `dequeue` query returns."""

    id: int
    priority: int
    eta: datetime
    payload: bytes
    attempts: int
    deaths: int
    has_slot: bool  # took a slot of its topic's concurrency limit with the claim


@dataclass(frozen=True, slots=True)
class NextDue:
    """The `next_eta` query: seconds until a queue's next message is due (None: nothing waits),
    and until the first rate-limited tenant may run again (None: none is blocked)."""

    due_s: float | None
    blocked_s: float | None


@dataclass(frozen=True, slots=True)
class Failure:
    """The exception a message failed with, as stored in its `errors`."""

    type_name: str
    message: str
    traceback: str

    @property
    def summary(self) -> str:
        """The message's `last_error`: "type: message"."""
        return f"{self.type_name}: {self.message}"

    def entry(self, attempt: int) -> ErrorEntry:
        return error_entry(attempt=attempt, type_name=self.type_name, message=self.message, traceback=self.traceback)


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """A retry asked for while the message runs: its updated payload and the backoff."""

    payload: bytes
    delay_ms: int


@dataclass(frozen=True, slots=True)
class DeferPlan:
    """The message waits for a limit: when it may run again and why."""

    delay_ms: int
    reason: str


class PgMessageProxy(MessageProxy):
    """A claimed message: knows its row, and whether the worker asked to retry it."""

    def __init__(
        self, message: Message[Any], row_id: int, attempt: int, consumer: PgConsumer, deaths: int = 0
    ) -> None:
        super().__init__(message)
        self.row_id = row_id
        self.attempt = attempt
        self.deaths = deaths
        self._consumer: PgConsumer | None = consumer
        self._retry: RetryPlan | None = None
        self._defer: DeferPlan | None = None
        self.has_slot = False  # holds a topic concurrency slot (taken with the claim)

    @property
    def message(self) -> Message[Any]:
        """The Dramatiq message this proxy wraps."""
        return self._message

    def is_in_flight(self) -> bool:
        return self._consumer is not None

    def detach(self) -> PgConsumer | None:
        """Mark the message done with; returns the consumer that held it (None when already done)."""
        consumer, self._consumer = self._consumer, None
        return consumer

    def schedule_retry(self, payload: bytes, delay_ms: int) -> None:
        self._retry = RetryPlan(payload, delay_ms)

    @property
    def scheduled_retry(self) -> RetryPlan | None:
        """The retry scheduled while it ran, if any."""
        return self._retry

    def schedule_defer(self, delay_ms: int, reason: str) -> None:
        """Put the message back (a limit): no attempt or retry is counted."""
        self._defer = DeferPlan(delay_ms, reason)

    @property
    def deferred(self) -> DeferPlan | None:
        return self._defer

    def failure(self) -> Failure:
        """The exception this message failed with."""
        exc = self._exception
        if exc is None:
            return Failure("neuron_tasks.errors.NeuronTasksError", "message failed with an unknown error", "")
        tb = self.options.get("traceback") or "".join(traceback.format_exception(exc))
        return Failure(exception_type_name(exc), str(exc), tb)


class PgConsumer(Consumer):
    """Iterates over one queue's messages for Dramatiq's ConsumerThread.

    At most `limit` messages are held (claimed, not yet acked) at once; claims are made
    in batches when at least a quarter of that room is free, or when nothing is held.
    """

    def __init__(self, broker: PostgresBroker, queue_name: str, timeout_ms: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.timeout_s = timeout_ms / 1000.0
        self.cache: deque[Claim] = deque()
        self.event = broker.event(queue_name)
        self._held = 0
        self._held_lock = threading.Lock()
        self._next_poll = 0.0
        self._to_free: list[int] = []  # topic slots of finished messages, freed in one statement
        self._free_lock = threading.Lock()
        self.closed = False

    @property
    def limit(self) -> int:
        """batch_size, read on every claim so that a runtime change applies at once."""
        return max(1, self.broker.settings.batch_size)

    # -- Dramatiq's Consumer API ------------------------------------------------------
    def __next__(self) -> MessageProxy | None:
        """A claimed message, or None after waiting at most the worker's timeout.

        The database is asked again when woken (NOTIFY, an ack, a settings change), when the
        next delayed message is due, and otherwise every `naptime_ms` (the polling fallback).
        """
        while True:
            if self._to_free:
                self._free_slots()
            if self.cache:
                proxy = self._decode(self.cache.popleft())
                if proxy is None:
                    continue
                return proxy
            now = time.monotonic()
            if self.event.is_set() or now >= self._next_poll:
                self.event.clear()
                self._next_poll = now + self.broker.settings.naptime_ms / 1000.0
                room = self.limit - self._held
                if room >= max(1, self.limit // 4) or self._held == 0:
                    rows = self._claim(room)
                    if rows:
                        self.cache.extend(rows)
                        continue
                    due = self._next_due()
                    if due is not None:
                        self._next_poll = min(self._next_poll, now + max(due, 0.001))
            self.event.wait(max(min(self.timeout_s, self._next_poll - time.monotonic()), 0.0))
            return None

    def ack(self, message: MessageProxy) -> None:
        proxy = self._own(message)
        deferred, retry = proxy.deferred, proxy.scheduled_retry
        if deferred is not None:
            self.broker.completer.defer(Deferral(proxy.row_id, self.queue_name, deferred.delay_ms))
        elif retry is not None:
            failure = proxy.failure()
            self.broker.completer.retry(
                RetryResult(
                    id=proxy.row_id,
                    queue_name=self.queue_name,
                    payload=retry.payload,
                    delay_ms=retry.delay_ms,
                    error=failure.summary,
                    entry=failure.entry(proxy.attempt),
                )
            )
        else:
            self.broker.completer.ack(proxy.row_id)
        self._release_slot(proxy)

    def nack(self, message: MessageProxy) -> None:
        proxy = self._own(message)
        failure = proxy.failure()
        self.broker.completer.nack(DeadLetter(proxy.row_id, failure.summary, failure.entry(proxy.attempt)))
        self._release_slot(proxy)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Give messages this process holds but will not run back to the queue."""
        ids = []
        for message in messages:
            proxy = self._own(message)
            ids.append(proxy.row_id)
            self._release_slot(proxy)
        ids.extend(claim.id for claim in self.cache)
        self.cache.clear()
        self.broker.release(ids)
        self._free_slots()

    def close(self) -> None:
        self._free_slots()
        if self.cache:
            ids = [claim.id for claim in self.cache]
            self.cache.clear()
            try:
                self.broker.release(ids)
            except psycopg.Error as exc:
                log.warning("could not give back %d prefetched messages: %s", len(ids), exc)
        self.closed = True

    # -- internals ----------------------------------------------------------------------
    def _own(self, message: MessageProxy) -> PgMessageProxy:
        if not isinstance(message, PgMessageProxy):
            raise TypeError(f"{message!r} was not claimed from a PostgresBroker")
        return message

    def _release_slot(self, proxy: PgMessageProxy) -> None:
        claimer = proxy.detach()  # after a consumer restart, acks arrive through the new one
        if claimer is None:
            return
        if proxy.has_slot:
            # Its actor is done: its topic slot is freed before this consumer claims again, with
            # the slots of the other messages finished meanwhile in one statement, without
            # waiting for the results to be written (worker threads ack; the consumer thread,
            # woken below, frees and claims).
            proxy.has_slot = False
            with self._free_lock:
                self._to_free.append(proxy.row_id)
        claimer.finished_one()

    def finished_one(self) -> None:
        """One message this consumer claimed is done with: room for another; wake the claiming loop."""
        with self._held_lock:
            self._held -= 1
        self.event.set()

    def _free_slots(self) -> None:
        with self._free_lock:
            ids, self._to_free = self._to_free, []
        if not ids:
            return
        try:
            with self.broker.soft_pool.connection() as conn:
                conn.execute(q("free_slots"), {"ids": ids})
        except psycopg.Error as exc:
            log.warning("could not free %d topic slots now (%s); the completer frees them", len(ids), exc)

    def _claim(self, room: int) -> list[Claim]:
        params = {
            "queue_name": self.queue_name,
            "owner": self.broker.owner,
            "lease_s": self.broker.settings.lease_s,
            "limit": room,
        }
        try:
            # A claim lost in a server crash only returns the message to the queue: no need to
            # wait for the WAL flush (the soft-state pool commits asynchronously).
            with self.broker.soft_pool.connection() as conn, conn.cursor(row_factory=class_row(Claim)) as cur:
                claims = cur.execute(q("dequeue"), params).fetchall()
        except psycopg.OperationalError as exc:
            # Dramatiq's ConsumerThread restarts the consumer after a connection error.
            raise ConnectionClosed(exc) from None
        claims.sort(key=lambda c: (c.priority, c.eta, c.id))
        if any(c.has_slot for c in claims):
            self.broker.completer.slots_taken()
        with self._held_lock:
            self._held += len(claims)
        return claims

    def _next_due(self) -> float | None:
        """Seconds until a claim may find something; None when the queue has nothing waiting."""
        try:
            with self.broker.soft_pool.connection() as conn, conn.cursor(row_factory=class_row(NextDue)) as cur:
                row = cur.execute(q("next_eta"), {"queue_name": self.queue_name}).fetchone()
        except psycopg.OperationalError as exc:
            raise ConnectionClosed(exc) from None
        if row is None or row.due_s is None:
            return None
        due = float(row.due_s)
        if due > 0:
            return due
        # Due messages we could not claim: their tenant is rate-limited or their topic is full.
        blocked = float(row.blocked_s) if row.blocked_s is not None else None
        retry = self.broker.settings.topic_retry_ms / 1000.0
        return max(min(blocked, retry) if blocked is not None else retry, 0.002)

    def _decode(self, claim: Claim) -> PgMessageProxy | None:
        try:
            message = Message.decode(bytes(claim.payload))
            options = message.options
            if "eta" in options or message.queue_name != self.queue_name:
                # Our rows carry their own eta; Dramatiq would hold an `eta` option in memory.
                options = {k: v for k, v in options.items() if k != "eta"}
                message = message.copy(queue_name=self.queue_name, options=options)
        except Exception as exc:
            self._dead_letter_undecodable(claim.id, exc)
            return None
        proxy = PgMessageProxy(message, claim.id, claim.attempts, self, claim.deaths)
        proxy.has_slot = claim.has_slot
        return proxy

    def _dead_letter_undecodable(self, row_id: int, exc: BaseException) -> None:
        cause = exc.__cause__ or exc
        text = f"payload is not a valid Dramatiq message ({type(cause).__name__}: {cause})"
        log.error("message row %s: %s; moved to the dead letters", row_id, text)
        failure = Failure("dramatiq.errors.DecodeError", text, "")
        params = DeadLetter(row_id, failure.summary, failure.entry(1)).params(self.broker.owner)

        def run() -> None:
            with self.broker.pool.connection() as conn:
                conn.execute(q("nack"), params)

        db.retrying(run, what="dead-letter undecodable message")
        with self._held_lock:
            self._held -= 1
