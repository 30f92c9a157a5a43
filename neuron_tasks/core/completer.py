"""Writes the results of processed messages: acks, retries, dead letters, deferrals.

Worker threads hand results over; this thread writes them at once when it is idle, and
whatever arrived during a write in the next transaction (group commit), so a finished job's
ack is in the database within a few milliseconds and a SIGKILL re-runs little more than the
jobs that were running. Each result has a `done` callback, called once the result is written:
the consumer frees room for a new claim only then, so claimed-plus-unwritten messages stay
within batch_size (while results cannot be written, the process stops claiming).

Acks commit without waiting for the WAL flush, on one connection the completer keeps: an ack
is visible (and a SIGKILLed worker never re-runs its job) as soon as it is written, at a
fraction of a flush's cost. At least every `CONFIRM_EVERY_S` a flushed commit on that same
connection makes every earlier ack durable; when the connection is lost before that (the server
may have crashed and rolled back the last fraction of a second), the acks since the last flush
are written again, flushed, on the next connection (an ack is idempotent: one that survived
matches no row). Retries, dead letters, deferrals and releases always wait for the flush.

A lost connection keeps the results for the next try (retried every quarter second at most),
so nothing is dropped; if the process dies first, the leases expire and the messages run
again (at-least-once). A result that matches no row (another worker took the message over
after its lease expired) is logged with its message id and counted
(`neuron_tasks_results_not_recorded_total`, and `Completer.not_recorded`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import scalar_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.sql import q

log = logging.getLogger(__name__)
#: How long one write waits for a pooled connection before the batch is tried again.
CONNECTION_WAIT_S = 1.0
#: Results that could not be written are left to run again once their lease expires: their rows
#: are not renewed for this long (then forgotten; by then they ran again elsewhere).
ABANDONED_KEEP_S = 3600.0
#: Acks committed without waiting for the flush are made durable (one flushed commit) this often.
CONFIRM_EVERY_S = 0.2

#: Called once a result is written (or can never be): frees the consumer's room for a claim.
Done = Callable[[], None]


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
    """Results waiting to be written: acked row ids, retries, dead letters, deferrals and
    claimed messages given back; with the message id of each row (for logs) and its callback."""

    acks: list[int] = field(default_factory=list)
    retries: list[RetryResult] = field(default_factory=list)
    nacks: list[DeadLetter] = field(default_factory=list)
    defers: list[Deferral] = field(default_factory=list)
    releases: list[int] = field(default_factory=list)
    handoffs: list[tuple[int, int]] = field(default_factory=list)  # topic slots: (finished, next holder)
    labels: dict[int, str] = field(default_factory=dict)
    done: dict[int, Done] = field(default_factory=dict)

    def __len__(self) -> int:
        return (len(self.acks) + len(self.retries) + len(self.nacks) + len(self.defers) + len(self.releases)
                + len(self.handoffs))

    def __bool__(self) -> bool:
        return bool(self.acks or self.retries or self.nacks or self.defers or self.releases or self.handoffs)

    def note(self, row_id: int, message_id: str, done: Done | None) -> None:
        if message_id:
            self.labels[row_id] = message_id
        if done is not None:
            self.done[row_id] = done

    def prepend(self, earlier: Batch) -> None:
        """Put an unwritten batch back in front of this one."""
        self.acks[:0] = earlier.acks
        self.retries[:0] = earlier.retries
        self.nacks[:0] = earlier.nacks
        self.defers[:0] = earlier.defers
        self.releases[:0] = earlier.releases
        self.handoffs[:0] = earlier.handoffs
        self.labels.update(earlier.labels)
        self.done.update(earlier.done)

    def singles(self) -> list[Batch]:
        """One batch per result (releases stay together: they cannot fail on their content)."""
        out = [Batch(acks=[a]) for a in self.acks] + [Batch(retries=[r]) for r in self.retries]
        out += [Batch(nacks=[n]) for n in self.nacks] + [Batch(defers=[d]) for d in self.defers]
        if self.releases:
            out.append(Batch(releases=list(self.releases)))
        if self.handoffs:  # first: a slot handed over is not freed with its old holder's result
            out.insert(0, Batch(handoffs=list(self.handoffs)))
        for single in out:
            for row_id in single.row_ids():
                single.note(row_id, self.labels.get(row_id, ""), self.done.get(row_id))
        return out

    def row_ids(self) -> list[int]:
        """Every message this batch finishes, retries, dead-letters, defers or gives back."""
        return (self.acks + [r.id for r in self.retries] + [n.id for n in self.nacks] + [d.id for d in self.defers]
                + self.releases)

    def kind(self, row_id: int) -> str:
        """What this batch records for a row, in words."""
        if row_id in self.acks:
            return "ack"
        if any(r.id == row_id for r in self.retries):
            return "retry"
        if any(n.id == row_id for n in self.nacks):
            return "dead letter"
        if any(d.id == row_id for d in self.defers):
            return "deferral"
        return "release"

    def label(self, row_id: int) -> str:
        message_id = self.labels.get(row_id)
        return f"message {message_id} (row {row_id})" if message_id else f"message row {row_id}"

    def finish(self) -> None:
        """Written (or never writable): call every result's callback once."""
        callbacks, self.done = self.done, {}
        for done in callbacks.values():
            try:
                done()
            except Exception:
                log.exception("a result callback failed")


@cache
def _not_recorded_metric() -> Any:
    """The Prometheus counter of results not recorded (None without prometheus-client)."""
    try:
        from prometheus_client import Counter as PromCounter
    except ImportError:
        return None
    return PromCounter("neuron_tasks_results_not_recorded",
                       "Results of messages that could not be recorded: taken over by another worker after their "
                       "lease expired (the message may run twice), or not writable (it runs again); kind "
                       "\"unstarted\": claimed messages not run because their lease lapsed before they started.",
                       ("kind", "reason"))


class Completer(threading.Thread):
    """The thread that writes a process's results (see the module's docstring)."""

    def __init__(
        self,
        pool: Callable[[], ConnectionPool],
        owner: UUID,
        on_slots_freed: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="neuron-tasks-completer", daemon=True)
        self._pool = pool
        self.owner = owner
        self.on_slots_freed = on_slots_freed
        self._cond = threading.Condition()
        self._batch = Batch()
        self._in_flight = 0
        self._stopping = False
        self._took_slots = False
        self._slots_freed = False  # the last write freed topic slots
        self._abandoned: dict[int, float] = {}
        self._abandoned_lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None  # held while it works; from `pool`
        self._conn_pool: ConnectionPool | None = None
        self._unconfirmed: list[int] = []  # acks written on `_conn` since its last flushed commit
        self._replay: list[int] = []  # acks to write again, flushed, after a lost connection
        self._confirmed_at = time.monotonic()
        #: Acks written again after a lost connection that had indeed been lost by the server.
        self.replayed = 0
        #: Results not recorded since start, by (kind, reason): "taken over" or "unwritable".
        self.not_recorded: Counter[tuple[str, str]] = Counter()
        self._outage = db.Outage(log, "recording results")

    @property
    def took_slots(self) -> bool:
        """Whether this process claimed messages holding topic slots (they are freed with results)."""
        return self._took_slots

    def slots_taken(self) -> None:
        """Called by a consumer whose claim took topic slots."""
        self._took_slots = True

    # -- called by worker threads -------------------------------------------------
    def ack(self, row_id: int, *, message_id: str = "", done: Done | None = None) -> None:
        self._add(row_id, message_id, done, lambda b: b.acks.append(row_id))

    def retry(self, result: RetryResult, *, message_id: str = "", done: Done | None = None) -> None:
        self._add(result.id, message_id, done, lambda b: b.retries.append(result))

    def nack(self, result: DeadLetter, *, message_id: str = "", done: Done | None = None) -> None:
        self._add(result.id, message_id, done, lambda b: b.nacks.append(result))

    def defer(self, result: Deferral, *, message_id: str = "", done: Done | None = None) -> None:
        self._add(result.id, message_id, done, lambda b: b.defers.append(result))

    def hand_over(self, old: int, new: int) -> None:
        """Message `old` (done) hands its topic slot to message `new` of this process, which runs
        next; written before any later result (so before `new`'s own)."""
        with self._cond:
            self._batch.handoffs.append((old, new))
            self._cond.notify()

    def release(self, row_ids: Iterable[int], *, done: Done | None = None) -> None:
        """Give claimed messages back to their queues (`done` is called once per message)."""
        with self._cond:
            for row_id in row_ids:
                self._batch.releases.append(row_id)
                self._batch.note(row_id, "", done)
            self._cond.notify()

    def _add(self, row_id: int, message_id: str, done: Done | None, put: Callable[[Batch], None]) -> None:
        with self._cond:
            put(self._batch)
            self._batch.note(row_id, message_id, done)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._batch) + self._in_flight

    def unflushed(self) -> int:
        """Acks written but not yet known to be flushed (written again if the connection is lost)."""
        return len(self._unconfirmed) + len(self._replay)

    # -- read by the keeper and the consumer --------------------------------------
    def abandoned(self) -> list[int]:
        """Rows whose result could not be written, or that were taken over before they started:
        their leases are left to expire, so that they run again (the keeper does not renew them)."""
        with self._abandoned_lock:
            if not self._abandoned:
                return []
            old = time.monotonic() - ABANDONED_KEEP_S
            self._abandoned = {i: t for i, t in self._abandoned.items() if t > old}
            return list(self._abandoned)

    def dropped(self, row_id: int, reason: str, *, abandon: bool) -> None:
        """A claimed message this process will not run (`reason`: its lease lapsed before it
        started), counted with the results not recorded (kind "unstarted"); with `abandon` its
        lease is not renewed again, unless this process claims it anew."""
        if abandon:
            with self._abandoned_lock:
                self._abandoned[row_id] = time.monotonic()
        self._count("unstarted", reason)

    def claimed_again(self, row_ids: Iterable[int]) -> None:
        """This process claimed these rows anew: renew their leases again."""
        if self._abandoned:
            with self._abandoned_lock:
                for row_id in row_ids:
                    self._abandoned.pop(row_id, None)

    # -- lifecycle ------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.join(timeout)
        left = self.pending()
        if left:
            log.warning("%d results could not be recorded before shutdown (the database did not answer); "
                        "their messages run again once their leases expire", left)
            self._count("any", "shutdown", left)

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._batch and not self._stopping:
                    if self._unconfirmed or self._replay:
                        if time.monotonic() - self._confirmed_at >= CONFIRM_EVERY_S:
                            break
                        self._cond.wait(CONFIRM_EVERY_S)
                    else:
                        self._cond.wait(0.5)
                if not self._batch and self._stopping and not self._unconfirmed and not self._replay:
                    self._hand_back_connection()
                    return
                # Written at once when idle; what arrives during this write goes in the next one.
                batch, self._batch = self._batch, Batch()
                self._in_flight = len(batch)
            try:
                self._make_durable(now=self._stopping)
                if not batch:
                    continue
                unmatched = self._write(batch)
            except db.UNAVAILABLE as exc:
                # The connection is gone (outage, restart, terminated backend): keep the batch and retry.
                self._lost_connection()
                self._put_back(batch)
                time.sleep(self._outage.failed(exc))
                continue
            except Exception:
                # One bad result must not block every other: write them one by one.
                log.exception("a batch of %d results failed; writing them one by one", len(batch))
                if not self._write_singly(batch):
                    continue
            else:
                self._outage.recovered()
                self._report(batch, unmatched)
                batch.finish()
            with self._cond:
                self._in_flight = 0
            if self._slots_freed and self.on_slots_freed is not None:
                self._slots_freed = False
                self.on_slots_freed()  # consumers waiting for a free topic slot may claim again

    # -- the completer's connection ------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        """The connection results are written on, kept while it works."""
        if self._conn is None:
            pool = self._pool()
            self._conn = pool.getconn(timeout=CONNECTION_WAIT_S)
            self._conn_pool = pool
        return self._conn

    def _hand_back_connection(self) -> None:
        conn, pool, self._conn, self._conn_pool = self._conn, self._conn_pool, None, None
        if conn is not None and pool is not None:
            try:
                pool.putconn(conn)
            except Exception as exc:  # a closed pool: the connection goes with it
                log.debug("could not return the completer's connection: %s", exc)

    def _lost_connection(self) -> None:
        """The connection failed: acks not yet flushed may be lost; write them again on the next."""
        self._replay.extend(self._unconfirmed)
        self._unconfirmed = []
        self._hand_back_connection()

    def _make_durable(self, *, now: bool = False) -> None:
        """Acks to write again come first; acks not flushed for CONFIRM_EVERY_S get one flushed
        commit (it flushes every earlier commit of the server, so theirs too)."""
        try:
            self._flush_or_replay(now=now)
        except db.UNAVAILABLE:
            raise
        except psycopg.Error as exc:  # never loop on it: the server's WAL writer flushes them soon
            log.warning("could not flush %d acks (%s); the server flushes them on its own within a second",
                        self.unflushed(), db.one_line(exc))
            self._unconfirmed, self._replay = [], []
            self._confirmed_at = time.monotonic()

    def _flush_or_replay(self, *, now: bool) -> None:
        if self._replay:
            conn = self._connection()
            with conn.transaction(), conn.cursor(row_factory=scalar_row) as cur:
                cur.execute(q("durable_commit"))
                written = cur.execute(q("ack"), {"ids": self._replay, "owner": self.owner}).fetchall()
            if written:
                self.replayed += len(written)
                log.warning("the connection was lost before %d acks were flushed (the server restarted); "
                            "they are written again", len(written))
            self._replay = []
            self._confirmed_at = time.monotonic()
            return
        if self._unconfirmed and (now or time.monotonic() - self._confirmed_at >= CONFIRM_EVERY_S):
            self._connection().execute(q("flush_commits"))
            self._unconfirmed = []
            self._confirmed_at = time.monotonic()

    def _put_back(self, batch: Batch) -> None:
        with self._cond:
            self._batch.prepend(batch)
            self._in_flight = 0

    def _write_singly(self, batch: Batch) -> bool:
        """Write each result alone; False when the database went away (the rest is kept)."""
        singles = batch.singles()
        for n, single in enumerate(singles):
            try:
                unmatched = self._write(single)
            except db.UNAVAILABLE as exc:
                self._lost_connection()
                rest = Batch()
                for later in reversed(singles[n:]):
                    rest.prepend(later)
                self._put_back(rest)
                time.sleep(self._outage.failed(exc))
                return False
            except Exception:
                for row_id in single.row_ids():
                    log.exception("could not record the %s of %s; its lease is left to expire and it runs again",
                                  single.kind(row_id), single.label(row_id))
                    self._count(single.kind(row_id), "unwritable")
                    with self._abandoned_lock:
                        self._abandoned[row_id] = time.monotonic()
            else:
                self._report(single, unmatched)
            single.finish()
        return True

    def _hand_over(self, cur: psycopg.Cursor[Any], handoffs: list[tuple[int, int]]) -> None:
        moves = _chains(handoffs)
        got = set(cur.execute(q("hand_over_slots"), {"old": list(moves), "new": list(moves.values())}).fetchall())
        self._missed_hand_overs(moves, got)

    def _report(self, batch: Batch, unmatched: list[int]) -> None:
        """Results that matched no row: the message was no longer this worker's."""
        for row_id in unmatched:
            kind = batch.kind(row_id)
            log.warning("the %s of %s matched no row: another worker took the message over after its lease "
                        "expired, so it may have run twice", kind, batch.label(row_id))
            self._count(kind, "taken over")

    def _count(self, kind: str, reason: str, n: int = 1) -> None:
        self.not_recorded[(kind, reason)] += n
        metric = _not_recorded_metric()
        if metric is not None:
            metric.labels(kind, reason).inc(n)

    def _write(self, batch: Batch) -> list[int]:
        """Write a batch in one transaction; returns the rows whose result matched no row."""
        unmatched: list[int] = []
        woken: set[str] = set()
        conn = self._connection()
        if len(batch.acks) == len(batch) and not self._took_slots:
            # Only acks (the common case): one statement, one round trip, no BEGIN/COMMIT, no flush.
            with conn.cursor(row_factory=scalar_row) as cur:
                written = set(cur.execute(q("ack"), {"ids": batch.acks, "owner": self.owner}).fetchall())
            self._unconfirmed.extend(written)
            return [i for i in batch.acks if i not in written]
        if not (batch.retries or batch.nacks or batch.defers or batch.releases):
            return self._write_slots(conn, batch)
        with conn.transaction():
            with conn.cursor(row_factory=scalar_row) as cur:
                # Durable: a lost retry, dead letter or release would leave its row running.
                cur.execute(q("durable_commit"))
                if batch.acks:
                    written = set(cur.execute(q("ack"), {"ids": batch.acks, "owner": self.owner}).fetchall())
                    unmatched += [i for i in batch.acks if i not in written]
                if batch.handoffs:
                    self._hand_over(cur, batch.handoffs)
                if self._took_slots:  # this process claimed messages holding topic slots
                    freed = conn.execute(q("free_slots"), {"ids": batch.row_ids()})
                    self._slots_freed = self._slots_freed or freed.rowcount > 0
                for name, results in (("retry", batch.retries), ("nack", batch.nacks), ("defer", batch.defers)):
                    if results:
                        cur.executemany(q(name), [r.params(self.owner) for r in results], returning=True)
                        matched = _returned(cur)
                        unmatched += [r.id for r in results if r.id not in matched]
                if batch.releases:
                    woken.update(cur.execute(q("release"), {"ids": batch.releases, "owner": self.owner}).fetchall())
            woken.update(r.queue_name for r in batch.retries)
            woken.update(d.queue_name for d in batch.defers)
            for queue_name in sorted(woken):
                conn.execute(q("notify"), {"queue_name": queue_name})
        self._unconfirmed = []  # this durable commit made every earlier ack durable too
        self._confirmed_at = time.monotonic()
        return unmatched


    def _write_slots(self, conn: psycopg.Connection[Any], batch: Batch) -> list[int]:
        """Acks and topic-slot hand-overs (a process holding topic slots): one statement, so one
        round trip and its own transaction, no flush. A slot handed to a message that finished in
        this same batch is given back instead."""
        moves = _chains(batch.handoffs)
        finished = set(batch.acks)
        free = [old for old, new in moves.items() if new in finished]
        moves = {old: new for old, new in moves.items() if new not in finished}
        free += [i for i in batch.acks if i not in moves]
        with conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(q("ack_with_slots"), {
                "ids": batch.acks, "owner": self.owner, "old": list(moves), "new": list(moves.values()),
                "free": free if self._took_slots else [],
            }).fetchall()
        written = {row_id for kind, row_id in rows if kind == "acked"}
        self._slots_freed = self._slots_freed or any(kind == "freed" for kind, _ in rows)
        self._missed_hand_overs(moves, {row_id for kind, row_id in rows if kind == "moved"})
        self._unconfirmed.extend(written)
        return [i for i in batch.acks if i not in written]

    def _missed_hand_overs(self, moves: dict[int, int], got: set[int]) -> None:
        for old, new in moves.items():
            if new not in got:
                log.warning("the topic slot of message row %s could not be handed to row %s (its lease had "
                            "expired and the slot was taken back); row %s runs without one", old, new, new)


def _chains(handoffs: list[tuple[int, int]]) -> dict[int, int]:
    """Hand-overs in order, a chain (a to b, then b to c) folded into one (a to c): one UPDATE
    moves each slot once."""
    root: dict[int, int] = {}  # newest holder -> the holder the slot has in the database
    for old, new in handoffs:
        root[new] = root.pop(old, old)
    return {first: last for last, first in root.items()}


def _returned(cur: psycopg.Cursor[Any]) -> set[Any]:
    """Every value returned by the statements of an `executemany(..., returning=True)`."""
    found: set[Any] = set()
    while True:
        found.update(cur.fetchall())
        if not cur.nextset():
            return found
