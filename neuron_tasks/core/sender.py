"""Writes a process's sends: every message that arrives while a write is in flight goes into the next
one (group commit), one INSERT and one commit per group.

A producer thread whose message finds no write in flight writes it at once (a lone producer pays no
added wait): it is the leader. Threads whose messages arrive meanwhile wait; when the leader's write
is done it hands the lead to the first of them, which writes everything that arrived, and so on.
When the last group held more than one message (threads are sending at the same time), a new leader
first waits up to `GATHER_S` for the threads that sent in the last `ACTIVE_S` and are not queued
yet, so that they share its commit instead of forming the next one (as PostgreSQL's commit_delay
does, inside the process). Each caller returns once its own message is committed, with its own
outcome: inserted, a unique job already live (the caller decides between DuplicateJob and the
existing message), or the error its message alone caused (a group that fails is written again one
message at a time, so a bad message never fails or rolls back the others). A lost connection is
retried until each caller's own deadline (enqueue_timeout_s), then that caller gets
DatabaseUnavailable.

A group commits durably when any message in it asks for that; otherwise without waiting for the
WAL flush (balanced and volatile queues). Volatile messages are not waited for: their callers
return at once, and a background thread writes them (retrying through outages). They are written
on `close()`, and at the latest when the interpreter exits; a process killed abruptly loses the ones
not yet written. At most `buffer_limit` unwritten volatile messages are held: past that, a volatile
send waits for room (and gets DatabaseUnavailable after its deadline).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from psycopg.rows import scalar_row
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.errors import DatabaseUnavailable
from neuron_tasks.sql import q

if TYPE_CHECKING:
    from neuron_tasks.core.producer import NewMessage

log = logging.getLogger(__name__)

#: The most messages one INSERT writes.
MAX_GROUP = 1000
#: How long a leader waits for the other sending threads to join its group (only while sends are
#: concurrent: the last group held more than one message).
GATHER_S = 0.0003
#: A thread that sent within this many seconds counts as sending.
ACTIVE_S = 0.05
#: Groups up to this size are sent as rows of VALUES (`insert_message_rows`), larger ones as arrays.
ROWS_AS_VALUES = 16
#: One row of `insert_message_rows`, in the order of `NewMessage.values`.
ROW_PLACEHOLDERS = ("(%s::text, %s::text, %s::text, %s::integer, %s::bigint, %s::text, %s::text, %s::timestamptz, "
                    "%s::text, %s::bytea)")
#: Unwritten volatile messages a process may hold before a volatile send waits for room.
BUFFER_LIMIT = 10_000


@dataclass(eq=False, slots=True)
class Outgoing:
    """A message on its way to the table, and what became of it."""

    row: NewMessage
    deadline: float | None  # monotonic; None: a volatile message, retried while the process lives
    durable: bool  # its group must wait for the WAL flush
    waited: bool  # a caller waits for the outcome
    event: threading.Event | None = None
    lead: bool = False  # handed the lead: this caller writes the next group
    finished: bool = False
    inserted: bool = False
    existing: str | None = None  # a unique job already live: that message's id
    error: BaseException | None = None


@dataclass
class SenderStats:
    """What a sender wrote, for tests and logs."""

    groups: int = 0
    messages: int = 0
    largest_group: int = 0
    lost: int = 0  # volatile messages that could not be written (logged with their ids)
    by_commit: dict[str, int] = field(default_factory=lambda: {"durable": 0, "async": 0})


class Sender:
    """Group commit of one process's sends (see the module's docstring)."""

    def __init__(self, pool: Callable[[bool], ConnectionPool], where: str, *,
                 buffer_limit: int = BUFFER_LIMIT, max_group: int = MAX_GROUP) -> None:
        self._pool = pool  # pool(durable): the connections that commit that way
        self._where = where
        self._cond = threading.Condition()
        self._queue: list[Outgoing] = []
        self._senders: dict[int, float] = {}  # thread id -> when it last sent and waited
        self._last_group = 0  # messages in the last group written
        self._leading = False  # a thread is writing (or has been handed the lead)
        self._unwritten_volatile = 0
        self._buffer_limit = buffer_limit
        self._max_group = max_group
        self._flusher: threading.Thread | None = None
        self._stopping = False
        self._outage = db.Outage(log, "writing volatile sends")
        self.stats = SenderStats()
        self._pid = os.getpid()
        _open.add(self)

    # -- producers ----------------------------------------------------------------
    def send(self, item: Outgoing) -> None:
        """Write `item` (a waited one: before returning; a volatile one: in the background)."""
        if not item.waited:
            self._hand_over(item)
            return
        item.event = threading.Event()
        now = time.monotonic()
        with self._cond:
            self._senders[threading.get_ident()] = now
            self._queue.append(item)
            lead = not self._leading
            if lead:
                self._leading = True
            elif self._last_group > 1:
                self._cond.notify_all()  # a leader may be gathering
        if lead:
            self._lead(item)
        while not item.finished:
            item.event.wait()
            item.event.clear()
            if item.lead and not item.finished:
                item.lead = False
                self._lead(item)

    def _gather(self) -> None:
        """Wait (up to GATHER_S, holding `_cond`'s lock between waits) until every thread that sent
        within ACTIVE_S has a message queued."""
        now = time.monotonic()
        if len(self._senders) > 256:  # threads come and go: forget the quiet ones
            self._senders = {t: at for t, at in self._senders.items() if now - at < ACTIVE_S}
        sending = sum(1 for at in self._senders.values() if now - at < ACTIVE_S)
        until = now + GATHER_S
        while len(self._queue) < sending and (left := until - time.monotonic()) > 0:
            self._cond.wait(left)

    def _hand_over(self, item: Outgoing) -> None:
        with self._cond:
            while self._unwritten_volatile >= self._buffer_limit and not self._stopping:
                left = (item.deadline or 0.0) - time.monotonic() if item.deadline is not None else 1.0
                if item.deadline is not None and left <= 0:
                    raise DatabaseUnavailable(
                        f"enqueue: {self._unwritten_volatile} volatile messages wait to be written to PostgreSQL "
                        f"at {self._where}; check that the server is up and reachable")
                self._cond.wait(min(max(left, 0.01), 0.25))
            item.deadline = None
            self._queue.append(item)
            self._unwritten_volatile += 1
            if not self._leading:
                self._ensure_flusher()
                self._cond.notify_all()

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._stopping = False
            self._flusher = threading.Thread(target=self._flush_loop, name="neuron-tasks-sender", daemon=True)
            self._flusher.start()

    # -- the leader -----------------------------------------------------------------
    def _lead(self, me: Outgoing | None) -> None:
        """Write one group; then hand the lead to a waiting caller, or to the flusher thread when
        only volatile messages are left (`me` None: this is the flusher, which keeps leading)."""
        while True:
            with self._cond:
                if me is not None and self._last_group > 1:
                    self._gather()
                group = self._queue[:self._max_group]
                del self._queue[:self._max_group]
                self._last_group = len(group)
            if group:
                self._write(group)
            with self._cond:
                if not self._queue:
                    self._leading = False
                    self._cond.notify_all()
                    return
                waiting = next((i for i in self._queue if i.waited), None)
                if waiting is not None and waiting is not me:
                    waiting.lead = True
                    assert waiting.event is not None
                    waiting.event.set()
                    return
                if me is not None and waiting is None:
                    self._leading = False  # volatile messages only: the flusher takes them
                    self._ensure_flusher()
                    self._cond.notify_all()
                    return

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue or self._leading:
                    if self._stopping and not self._queue:
                        return
                    self._cond.wait(0.5)
                self._leading = True
            self._lead(None)

    # -- writing ------------------------------------------------------------------------
    def _write(self, group: list[Outgoing]) -> None:
        durable = any(i.durable for i in group)
        live = group
        delay = 0.02
        while live:
            try:
                self._insert(live, durable)
                if self._outage.active:
                    self._outage.recovered()
                break
            except db.UNAVAILABLE as exc:
                now = time.monotonic()
                expired = [i for i in live if i.deadline is not None and i.deadline - now <= delay]
                for i in expired:
                    i.error = DatabaseUnavailable(
                        f"enqueue: PostgreSQL at {self._where} did not answer in time ({db.one_line(exc)}); "
                        "check that the server is up and reachable")
                    self._finish(i)
                live = [i for i in live if i not in expired]
                if not live:
                    break
                if not any(i.waited for i in live):
                    delay = self._outage.failed(exc)
                    if self._stopping and self._give_up_at is not None and time.monotonic() > self._give_up_at:
                        self._lose(live, exc)
                        break
                time.sleep(delay)
                delay = min(delay * 2, db.RECONNECT_EVERY_S)
            except Exception as exc:  # refused by the server (or not sendable): find the message it is about
                if len(live) > 1:
                    for single in live:  # find the message that fails: the others are written
                        self._write([single])
                    return
                self._failed(live[0], exc)
                break
        with self._cond:
            self.stats.groups += 1
            self.stats.messages += len(group)
            self.stats.largest_group = max(self.stats.largest_group, len(group))
            self.stats.by_commit["durable" if durable else "async"] += 1
            volatile = sum(1 for i in group if not i.waited)
            if volatile:
                self._unwritten_volatile -= volatile
                self._cond.notify_all()

    def _insert(self, live: list[Outgoing], durable: bool) -> None:
        """One statement (its own transaction) for the group; then the live holders of unique
        jobs that were not inserted."""
        left = min((i.deadline for i in live if i.deadline is not None), default=time.monotonic() + 5.0)
        timeout = max(left - time.monotonic(), 0.01)
        with self._pool(durable).connection(timeout=timeout) as conn, conn.cursor(row_factory=scalar_row) as cur:
            if len(live) == 1:
                one = live[0].row
                inserted = {one.message_id} if cur.execute(q("insert_message"), one.params()).fetchall() else set()
            elif len(live) <= ROWS_AS_VALUES:
                values = [v for i in live for v in i.row.values()]
                inserted = {str(m) for m in cur.execute(_rows_query(len(live)), values)}
            else:
                each = [i.row.params() for i in live]
                params = {key: [p[key] for p in each] for key in each[0]}
                inserted = {str(m) for m in cur.execute(q("insert_messages"), params)}
            for i in live:
                i.inserted = i.row.message_id in inserted
                if not i.inserted and i.row.fingerprint is not None:
                    found = cur.execute(q("live_by_fingerprint"), {"fingerprint": i.row.fingerprint}).fetchall()
                    i.existing = str(found[0]) if found else None
        for i in live:
            if not i.waited and not i.inserted:
                log.warning("volatile send of message %s not written: a unique job with key %r is live (message %s)",
                            i.row.message_id, i.row.fingerprint, i.existing)
            self._finish(i)

    _give_up_at: float | None = None

    def _failed(self, item: Outgoing, exc: BaseException) -> None:
        item.error = exc
        if not item.waited:
            with self._cond:
                self.stats.lost += 1
            log.error("volatile message %s (queue %s) could not be written: %s", item.row.message_id,
                      item.row.queue_name, db.one_line(exc))
        self._finish(item)

    def _lose(self, items: list[Outgoing], exc: BaseException) -> None:
        with self._cond:
            self.stats.lost += len(items)
        shown = ", ".join(i.row.message_id for i in items[:20]) + (" ..." if len(items) > 20 else "")
        log.error("%d volatile messages could not be written before the sender stopped (%s): %s", len(items),
                  db.one_line(exc), shown)
        for i in items:
            i.error = exc
            self._finish(i)

    @staticmethod
    def _finish(item: Outgoing) -> None:
        item.finished = True
        if item.event is not None:
            item.event.set()

    # -- shutdown -------------------------------------------------------------------------
    def unwritten(self) -> int:
        """Volatile messages handed over and not written yet."""
        with self._cond:
            return self._unwritten_volatile

    def close(self, timeout_s: float) -> int:
        """Write every volatile message held (retrying for up to `timeout_s`), then stop the
        background thread. Returns how many could not be written (logged with their ids)."""
        with self._cond:
            self._stopping = True
            self._give_up_at = time.monotonic() + timeout_s
            flusher = self._flusher
            if self._queue and not self._leading:
                self._ensure_flusher()
                self._stopping = True
                flusher = self._flusher
            self._cond.notify_all()
        if flusher is not None:
            flusher.join(timeout_s + 1.0)
        with self._cond:
            left = self._unwritten_volatile
        _open.discard(self)
        return left


_open: weakref.WeakSet[Sender] = weakref.WeakSet()


def _flush_at_exit() -> None:
    for sender in list(_open):
        if sender._pid != os.getpid():
            continue  # a forked child's copy: the parent writes its own messages
        try:
            sender.close(5.0)
        except Exception as exc:  # at exit: report, never raise
            log.error("could not write the volatile messages held at exit: %s", exc)


atexit.register(_flush_at_exit)



@cache
def _rows_query(n: int) -> str:
    """`insert_message_rows` for `n` messages (placeholders only; psycopg prepares each size once used)."""
    return q("insert_message_rows").replace("{rows}", ", ".join([ROW_PLACEHOLDERS] * n))
