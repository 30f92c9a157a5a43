"""The consumer Dramatiq's worker iterates: batched claims, woken by NOTIFY.

A process holds at most batch_size messages of a queue: claimed and not yet written back. Room
for a new claim is freed when the completer has written a message's result, not when the
actor returns, so while results cannot be written the process stops claiming. A worker thread
waits for its message's result to be written before it takes another message (the completer
writes every waiting thread's result in one transaction: group commit), so a process killed at
any moment has at most one finished-but-unrecorded message per thread. While the
database is away the consumer keeps trying every quarter second at most (it never hands
Dramatiq a connection error, whose consumer restart waits seconds), and claims again as
soon as the server answers.
"""

from __future__ import annotations

import dataclasses
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
from dramatiq import get_encoder
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import DecodeError
from dramatiq.message import Message
from dramatiq.middleware import SkipMessage
from psycopg.rows import class_row

from neuron_tasks import db
from neuron_tasks.core.completer import DeadLetter, Deferral, Done, ErrorEntry, RetryResult, error_entry
from neuron_tasks.core.keeper import lease_margin
from neuron_tasks.errors import DatabaseUnavailable
from neuron_tasks.sql import q

if TYPE_CHECKING:
    from neuron_tasks.core.broker import PostgresBroker

log = logging.getLogger(__name__)
#: How long a claim waits for a pooled connection before it counts as failed (and is tried again).
CONNECTION_WAIT_S = 1.0
#: A worker thread waiting this long for its result to be written says so (and keeps waiting).
RESULT_WAIT_REPORT_S = 10.0
#: Messages of a topic with a concurrency limit claimed without a slot, per slot this process
#: holds: each waits for the slot of a job of its topic in this process (handed over as it ends).
WAITERS_PER_SLOT = 2


class Room:
    """The messages a process holds on one queue: claimed and not yet written back (shared by
    every consumer of the queue in the process, so a restarted consumer knows what is held)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self._lock = threading.Lock()
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def take(self, n: int) -> None:
        with self._lock:
            self._held += n

    def free(self, n: int = 1) -> None:
        """`n` messages were written back (or given back): room for as many; wake the claiming loop."""
        with self._lock:
            self._held = max(self._held - n, 0)
        self.event.set()


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(slots=True)
class Claim:
    """A message this process claimed: the columns the `dequeue` query returns (`gen` and
    `has_slot` are set by the consumer that holds it)."""

    id: int
    priority: int
    eta: datetime
    payload: bytes
    attempts: int
    deaths: int
    topic: str | None
    has_slot: bool  # took a slot of its topic's concurrency limit with the claim (or was handed one)
    gen: int = 0  # the claim's number in the keeper's `Horizons` (0: not tracked)


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


class LeaseLapsed(SkipMessage):
    """A claimed message whose lease lapsed before it started (the process was cut off from the
    database for longer than the lease): it is not run here (see `PgConsumer.may_start`)."""


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
        self.has_slot = False  # holds a topic concurrency slot (taken with the claim, or handed over)
        self.topic: str | None = None  # the row's topic
        self.written: threading.Event | None = None  # set once its result is written
        self.claim_gen = 0  # its claim in the keeper's `Horizons` (0: not tracked)
        self.lapsed: str | None = None  # why it may not start (its lease lapsed), once asked

    def may_start(self) -> bool:
        """Whether a worker thread may run it now: its lease is known to be still ours."""
        consumer = self._consumer
        return consumer is None or self.claim_gen == 0 or consumer.may_start(self)

    @property
    def message(self) -> Message[Any]:
        """The Dramatiq message this proxy wraps."""
        return self._message

    @property
    def _message(self) -> Message[Any]:
        return self._wrapped

    @_message.setter
    def _message(self, message: Message[Any]) -> None:
        # The fields every middleware hook reads (some 35 reads a message), kept on the proxy rather
        # than found through MessageProxy.__getattr__ each time. The message is frozen (a new one is
        # set here whole) and its options dict is the same object, so they cannot go stale.
        self._wrapped = message
        self.queue_name = message.queue_name
        self.actor_name = message.actor_name
        self.args = message.args
        self.kwargs = message.kwargs
        self.options = message.options
        self.message_id = message.message_id
        self.message_timestamp = message.message_timestamp

    def is_in_flight(self) -> bool:
        return self._consumer is not None

    def detach(self) -> PgConsumer | None:
        """Mark the message done with; returns the consumer that claimed it (None when already done)."""
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

    At most `limit` messages are held (claimed, not yet written back) at once; claims are made
    in batches when at least a quarter of that room is free, or when nothing is held.
    """

    def __init__(self, broker: PostgresBroker, queue_name: str, timeout_ms: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.timeout_s = timeout_ms / 1000.0
        self.cache: deque[Claim] = deque()
        self.event = broker.event(queue_name)
        self.room = broker.room(queue_name)
        self._next_poll = 0.0
        self._to_free: list[int] = []  # topic slots of finished messages, freed in one statement
        self._free_lock = threading.Lock()  # guards _to_free, _holding and _waiting
        self._holding: dict[str, int] = {}  # topic slots held by messages of this consumer, by topic
        self._waiting: dict[str, deque[Claim]] = {}  # claimed without a slot, waiting for one of ours
        self._outage = db.Outage(log, f"claiming messages of queue {queue_name!r}")
        self.closed = False
        # The last claim found nothing (at `broker.wakes` == _dry_wakes): woken only by hand-overs
        # and written results, the consumer does not claim again before _dry_until.
        self._dry = False
        self._dry_wakes = -1
        self._dry_until = 0.0

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
            if self._waiting:
                self._give_back_stranded()
            if self.cache:
                proxy = self._decode(self.cache.popleft())
                if proxy is None:
                    continue
                return proxy
            now = time.monotonic()
            if self.event.is_set() or now >= self._next_poll:
                self.event.clear()
                # Nothing new since a claim found nothing (woken by a hand-over or a written result):
                # only waiting messages are topped up, and the queue is asked again soon.
                quiet = (self._dry and self.broker.wakes == self._dry_wakes and now < self._dry_until
                         and now < self._next_poll)
                timer = self._next_poll  # when a delayed message is due, or the fallback poll
                self._next_poll = now + self.broker.settings.naptime_ms / 1000.0
                held = self.room.held
                room = self.limit - held
                if room >= max(1, self.limit // 4) or held == 0:
                    try:
                        wakes = self.broker.wakes
                        rows = [] if quiet else self._claim(room)
                        waiting = self._claim_waiting(room - len(rows))
                        if not quiet:
                            self._dry, self._dry_wakes = not rows, wakes
                            self._dry_until = time.monotonic() + self.broker.settings.topic_retry_ms / 1000.0
                        if quiet:
                            self._next_poll = min(timer, self._dry_until)
                        elif waiting:
                            self._next_poll = min(self._next_poll, self._dry_until)
                        if rows or waiting or quiet:
                            self._outage.recovered()
                            self.cache.extend(rows)
                            if rows or waiting:
                                continue
                            self.event.wait(max(min(self.timeout_s, self._next_poll - time.monotonic()), 0.0))
                            return None
                        due = self._next_due(since=now)
                        self._outage.recovered()
                    except db.UNAVAILABLE as exc:
                        # Try again shortly (the pool reconnects meanwhile); woken earlier by the
                        # listener when it reconnects.
                        self._next_poll = time.monotonic() + self._outage.failed(exc)
                    except psycopg.DataError as exc:
                        # A row the claim cannot read (it should never get in: the table's checks
                        # refuse it): say so and try again at the polling pace, never crash-loop.
                        log.error("claiming from queue %s failed: %s; retrying in %.1fs", self.queue_name,
                                  db.one_line(exc), self.broker.settings.naptime_ms / 1000.0)
                    else:
                        if due is not None:  # counted from now: the queries took some time
                            self._next_poll = min(self._next_poll, time.monotonic() + due)
            self.event.wait(max(min(self.timeout_s, self._next_poll - time.monotonic()), 0.0))
            return None

    def ack(self, message: MessageProxy) -> None:
        proxy = self._own(message)
        if proxy.lapsed is not None:
            self._drop_unstarted(proxy)
            return
        done = self._finish(proxy)
        if done is None:
            return
        done = self._written(proxy, done)
        completer, mid = self.broker.completer, proxy.message_id
        deferred, retry = proxy.deferred, proxy.scheduled_retry
        if deferred is not None:
            completer.defer(Deferral(proxy.row_id, self.queue_name, deferred.delay_ms), message_id=mid, done=done)
        elif retry is not None:
            failure = proxy.failure()
            completer.retry(
                RetryResult(
                    id=proxy.row_id,
                    queue_name=self.queue_name,
                    payload=retry.payload,
                    delay_ms=retry.delay_ms,
                    error=failure.summary,
                    entry=failure.entry(proxy.attempt),
                ),
                message_id=mid,
                done=done,
            )
        else:
            completer.ack(proxy.row_id, message_id=mid, done=done)
        self._await_written(proxy)

    def nack(self, message: MessageProxy) -> None:
        proxy = self._own(message)
        if proxy.lapsed is not None:
            self._drop_unstarted(proxy)
            return
        done = self._finish(proxy)
        if done is None:
            return
        done = self._written(proxy, done)
        failure = proxy.failure()
        self.broker.completer.nack(DeadLetter(proxy.row_id, failure.summary, failure.entry(proxy.attempt)),
                                   message_id=proxy.message_id, done=done)
        self._await_written(proxy)

    def _written(self, proxy: PgMessageProxy, free: Done) -> Done:
        """The completer's callback for this message's result: frees its room, wakes its thread."""
        event = proxy.written = threading.Event()

        def done() -> None:
            free()
            event.set()

        return done

    def _await_written(self, proxy: PgMessageProxy) -> None:
        """Block the worker thread until its message's result is written (or can never be)."""
        event = proxy.written
        if event is None or not self.broker.settings.ack_wait:
            return
        started = time.monotonic()
        while not event.wait(RESULT_WAIT_REPORT_S):
            log.warning("the result of message %s is not written after %.0fs (the database is away or slow); "
                        "this worker thread waits for it before taking another message",
                        proxy.message_id, time.monotonic() - started)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Give messages this process holds but will not run back to the queue."""
        ids = []
        for message in messages:
            proxy = self._own(message)
            if self._finish(proxy, hand_over=False) is not None:
                ids.append(proxy.row_id)
        ids.extend(claim.id for claim in self.cache)
        self.cache.clear()
        ids.extend(self._take_waiting())
        self._give_back(ids)
        self._free_slots()

    def close(self) -> None:
        self._free_slots()
        ids = [claim.id for claim in self.cache] + self._take_waiting()
        self.cache.clear()
        self._give_back(ids)
        self.closed = True

    def _give_back(self, ids: list[int]) -> None:
        """Release claimed messages now; when the database does not answer, the completer keeps
        trying (the room is freed once they are back)."""
        if not ids:
            return
        self.broker.keeper.horizons.forget(ids)
        try:
            self.broker.release(ids)
        except db.UNAVAILABLE as exc:
            log.warning("could not give back %d claimed messages now (%s); giving them back when the database "
                        "answers", len(ids), db.one_line(exc))
            self.broker.completer.release(ids, done=self.room.free)
        else:
            self.room.free(len(ids))

    # -- claimed messages whose lease lapsed before they started ------------------------------
    def may_start(self, proxy: PgMessageProxy) -> bool:
        """Called by the worker thread about to run `proxy`: True while its lease is known to be
        ours (its claim, or the last renewal that found it, was sent less than a lease ago, less a
        margin). After an outage longer than the lease it waits (at most a lease and a heartbeat)
        for the keeper's first renewal, which tells whether the row is still ours; a row taken
        over meanwhile (or not confirmed in time) is not run (`_drop_unstarted`)."""
        settings = self.broker.settings
        verdict = self.broker.keeper.horizons.start(proxy.row_id, proxy.claim_gen,
                                                   settings.lease_s + settings.heartbeat_s)
        if verdict == "ours":
            return True
        proxy.lapsed = verdict
        return False

    def _drop_unstarted(self, proxy: PgMessageProxy) -> None:
        """A claimed message not run because its lease lapsed before it started (another worker
        may run it now): logged, counted (`Completer.not_recorded`, kind "unstarted"), its lease
        never renewed again; given back to its queue when it may still be ours."""
        claimer = proxy.detach()
        if claimer is None:
            return
        if proxy.has_slot:  # its slot is freed with the row (taken over, or given back)
            proxy.has_slot = False
            with claimer._free_lock:
                topic = proxy.topic or ""
                claimer._holding[topic] = max(claimer._holding.get(topic, 0) - 1, 0)
        verdict, row_id = proxy.lapsed, proxy.row_id
        again = self.broker.keeper.horizons.holds(row_id)  # claimed anew by this process: that one runs
        reasons = {"stale": "claimed again", "lost": "taken over"}
        reason = f"lease lapsed, {reasons.get(verdict or '', 'not confirmed')}"
        log.warning("message %s (row %s) was not run: %s before it started (this process could not "
                    "reach the database for longer than the lease)%s", proxy.message_id, row_id, reason,
                    "" if verdict != "unknown" or again else "; giving it back to its queue")
        self.broker.completer.dropped(row_id, reason, abandon=not again)
        if verdict == "unknown" and not again:
            claimer._give_back([row_id])  # only if it is still ours (frees its room once back)
        else:
            claimer.room.free()

    # -- internals ----------------------------------------------------------------------
    def _own(self, message: MessageProxy) -> PgMessageProxy:
        if not isinstance(message, PgMessageProxy):
            raise TypeError(f"{message!r} was not claimed from a PostgresBroker")
        return message

    def _finish(self, proxy: PgMessageProxy, *, hand_over: bool = True) -> Done | None:
        """The message is done with: free its topic slot; returns the callback that frees its room
        once its result is written (None when it was already done with)."""
        claimer = proxy.detach()  # after a consumer restart, acks arrive through the new one
        if claimer is None:
            log.warning("%s was already acknowledged or given back; ignoring it this time", proxy.message_id)
            return None
        if proxy.has_slot:
            proxy.has_slot = False
            claimer._slot_done(proxy, hand_over=hand_over)
        return claimer.room.free

    def _slot_done(self, proxy: PgMessageProxy, *, hand_over: bool) -> None:
        """The actor of a message holding a topic slot is done. A message of the same topic that
        waits in this process takes the slot at once: the completer records the hand-over (before
        the result of either message), and the waiting message runs next. Otherwise the slot is
        freed before this consumer claims again, with the slots of the other messages finished
        meanwhile in one statement, without waiting for the results to be written (worker
        threads ack; the consumer thread, woken, frees and claims)."""
        topic = proxy.topic or ""
        with self._free_lock:
            queue = self._waiting.get(topic) if hand_over else None
            waiter = queue.popleft() if queue else None
            if waiter is None:
                self._holding[topic] = max(self._holding.get(topic, 0) - 1, 0)
                self._to_free.append(proxy.row_id)
        if waiter is not None:
            self.broker.completer.hand_over(proxy.row_id, waiter.id)
            waiter.has_slot = True  # taken off the waiting queue: held by nothing else
            self.cache.appendleft(waiter)
        self.event.set()

    def _claim_waiting(self, room: int) -> list[Claim]:
        """Claim messages to wait for the slots this process holds (see `_slot_done`)."""
        with self._free_lock:
            if all(len(self._waiting.get(t, ())) >= n for t, n in self._holding.items()):
                return []  # at least one waiting per slot: top up later
            want = {t: WAITERS_PER_SLOT * n - len(self._waiting.get(t, ())) for t, n in self._holding.items()}
        want = {t: n for t, n in want.items() if n > 0 and t}
        if not want or room <= 0:
            return []
        lease_s = self.broker.settings.lease_s
        params = {
            "queue_name": self.queue_name,
            "owner": self.broker.owner,
            "lease_s": lease_s,
            "topics": list(want),
            "room": [min(n, room) for n in want.values()],
        }
        sent_at = time.monotonic()
        with self.broker.soft_pool.connection(timeout=CONNECTION_WAIT_S) as conn, \
                conn.cursor(row_factory=class_row(Claim)) as cur:
            claims = cur.execute(q("claim_waiting"), params).fetchall()
        claims.sort(key=lambda c: (c.priority, c.eta, c.id))
        self.room.take(len(claims))
        if claims:
            claims = self._track(claims, sent_at, lease_s)
        with self._free_lock:
            for claim in claims:
                self._waiting.setdefault(claim.topic or "", deque()).append(claim)
        return claims

    def _take_waiting(self) -> list[int]:
        """Every waiting message's row (they are given back)."""
        with self._free_lock:
            ids = [claim.id for queue in self._waiting.values() for claim in queue]
            self._waiting.clear()
        return ids

    def _give_back_stranded(self) -> None:
        """Waiting messages of a topic this process no longer holds a slot of go back to the queue."""
        with self._free_lock:
            stranded = [t for t, queue in self._waiting.items() if not queue or not self._holding.get(t)]
            ids = [claim.id for t in stranded for claim in self._waiting.pop(t)]
        if ids:
            self._give_back(ids)

    def _free_slots(self) -> None:
        with self._free_lock:
            ids, self._to_free = self._to_free, []
        if not ids:
            return
        self._dry = False  # a slot of ours is free: claim again
        try:
            with self.broker.soft_pool.connection(timeout=CONNECTION_WAIT_S) as conn:
                conn.execute(q("free_slots"), {"ids": ids})
        except (psycopg.Error, DatabaseUnavailable) as exc:
            log.warning("could not free %d topic slots now (%s); the completer frees them", len(ids),
                        db.one_line(exc))

    def _claim(self, room: int) -> list[Claim]:
        lease_s = self.broker.settings.lease_s
        params = {
            "queue_name": self.queue_name,
            "owner": self.broker.owner,
            "lease_s": lease_s,
            "limit": room,
        }
        # A claim lost in a server crash only returns the message to the queue: no need to
        # wait for the WAL flush (the soft-state pool commits asynchronously).
        pool = self.broker.soft_pool
        sent_at = time.monotonic()
        with pool.connection(timeout=CONNECTION_WAIT_S) as conn, conn.cursor(row_factory=class_row(Claim)) as cur:
            claims = cur.execute(q("dequeue"), params).fetchall()
        claims.sort(key=lambda c: (c.priority, c.eta, c.id))
        if any(c.has_slot for c in claims):
            self.broker.completer.slots_taken()
            with self._free_lock:
                for c in claims:
                    if c.has_slot and c.topic:
                        self._holding[c.topic] = self._holding.get(c.topic, 0) + 1
        self.room.take(len(claims))
        if claims:
            claims = self._track(claims, sent_at, lease_s)
        return claims

    def _track(self, claims: list[Claim], sent_at: float, lease_s: float) -> list[Claim]:
        """Claims committed: their leases are renewed again (if abandoned before), and ours until
        `lease_s` after the claim was sent, less a margin (see `may_start`)."""
        self.broker.completer.claimed_again(c.id for c in claims)
        gen = self.broker.keeper.horizons.claimed([c.id for c in claims], sent_at, lease_s,
                                                  lease_margin(self.broker.settings))
        for c in claims:
            c.gen = gen
        return claims

    def _next_due(self, since: float) -> float | None:
        """Seconds until a claim may find something; None when the queue has nothing waiting.
        `since`: when the claim that found nothing started."""
        pool = self.broker.soft_pool
        with pool.connection(timeout=CONNECTION_WAIT_S) as conn, conn.cursor(row_factory=class_row(NextDue)) as cur:
            row = cur.execute(q("next_eta"), {"queue_name": self.queue_name}).fetchone()
        if row is None or row.due_s is None:
            return None
        due = float(row.due_s)
        if due > 0:
            return due
        if -due <= time.monotonic() - since:
            # It became due while the claim ran (after the claim read the clock): claim again now.
            return 0.0
        # Due messages we could not claim: their tenant is rate-limited or their topic is full.
        blocked = float(row.blocked_s) if row.blocked_s is not None else None
        retry = self.broker.settings.topic_retry_ms / 1000.0
        return max(min(blocked, retry) if blocked is not None else retry, 0.002)

    def _decode(self, claim: Claim) -> PgMessageProxy | None:
        try:
            message = decode(bytes(claim.payload))
            options = message.options
            if "eta" in options or message.queue_name != self.queue_name:
                # Our rows carry their own eta; Dramatiq would hold an `eta` option in memory.
                # (Message.copy would merge the options, keeping `eta`: replace them whole.)
                options = {k: v for k, v in options.items() if k != "eta"}
                message = dataclasses.replace(message, queue_name=self.queue_name, options=options)
        except Exception as exc:
            if claim.has_slot:  # the dead letter's write frees its slot
                with self._free_lock:
                    topic = claim.topic or ""
                    self._holding[topic] = max(self._holding.get(topic, 0) - 1, 0)
            self.broker.keeper.horizons.forget([claim.id])
            self._dead_letter_undecodable(claim.id, exc)
            return None
        proxy = PgMessageProxy(message, claim.id, claim.attempts, self, claim.deaths)
        proxy.has_slot = claim.has_slot
        proxy.topic = claim.topic
        proxy.claim_gen = claim.gen
        return proxy

    def _dead_letter_undecodable(self, row_id: int, exc: BaseException) -> None:
        cause = exc.__cause__ or exc
        text = f"payload is not a valid Dramatiq message ({type(cause).__name__}: {cause})"
        log.error("message row %s: %s; moved to the dead letters", row_id, text)
        failure = Failure("dramatiq.errors.DecodeError", text, "")
        self.broker.completer.nack(DeadLetter(row_id, failure.summary, failure.entry(1)), done=self.room.free)


def decode(payload: bytes) -> Message[Any]:
    """A Dramatiq message from its bytes, refusing what Message.decode would quietly bend: args
    that are not a list (an object would become the tuple of its keys). Wrong kwargs and options
    are the message guard's to refuse, with the reason."""
    try:
        fields = get_encoder().decode(payload)
    except Exception as exc:
        raise DecodeError("Failed to decode message.", payload, exc) from exc
    if not isinstance(fields, dict):
        raise DecodeError("a message is a JSON object", payload, TypeError(type(fields).__name__))
    if "args" in fields and not isinstance(fields["args"], list):
        raise DecodeError("args must be a list", payload, TypeError(f"args is {type(fields['args']).__name__}"))
    try:
        return Message(**{**fields, "args": tuple(fields.get("args", ()))})
    except Exception as exc:
        raise DecodeError("Failed to decode message.", payload, exc) from exc
