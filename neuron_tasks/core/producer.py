"""The send path of the Postgres broker: check a message, hold its queue to `queue_depth`, and hand
it to the process's sender (group commit, sender.py), or write many at once (`enqueue_many`: one
binary COPY, or one INSERT when unique jobs or delays need the server's judgement).

A queue's durability (`durability`, `queue_durability`) decides when a send returns: durable once
its commit is on disk, balanced once committed (without waiting for the WAL flush), volatile once
handed to the sender (a unique job on a volatile queue is written before it returns, so that its
caller learns of a duplicate). docs/semantics.md says what each level can lose.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dramatiq.common import q_name
from dramatiq.message import Message
from dramatiq.middleware import Middleware
from psycopg.rows import scalar_row
from psycopg.types.string import BytesBinaryDumper

from neuron_tasks.config import Settings
from neuron_tasks.core.consumer import PgMessageProxy
from neuron_tasks.core.options import Prepared, bounded_delay_ms, prepare, prepare_for
from neuron_tasks.core.sender import Outgoing, Sender
from neuron_tasks.errors import ConfigurationError, DuplicateJob, QueueFull
from neuron_tasks.sql import q

if TYPE_CHECKING:
    from neuron_tasks.core.broker import PostgresBroker

log = logging.getLogger(__name__)

#: Skip reading a queue's count while it is known to be under this share of its depth.
DEPTH_SLACK = 0.9
DEPTH_RECHECK_S = 1.0
#: The binary COPY row of a message that needs no judgement by the server (not unique, no delay).
COPY_TYPES = ("text", "text", "text", "int4", "text", "text", "timestamptz", "bytea")


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message checked for enqueue: the row it becomes."""

    message_id: str
    queue_name: str
    actor_name: str
    priority: int
    delay_ms: int
    tenant: str | None
    topic: str | None
    deadline: datetime | None
    fingerprint: str | None  # a unique job's key
    on_duplicate: str  # 'raise' or 'existing'
    payload: bytes

    def params(self) -> dict[str, Any]:
        """The parameters of the `insert_message` query."""
        return {"message_id": self.message_id, "queue_name": self.queue_name, "actor_name": self.actor_name,
                "priority": self.priority, "delay_ms": self.delay_ms, "tenant": self.tenant, "topic": self.topic,
                "deadline": self.deadline, "fingerprint": self.fingerprint, "payload": self.payload}

    def values(self) -> tuple[Any, ...]:
        """The parameters of one row of `insert_message_rows` (`sender.ROW_PLACEHOLDERS`)."""
        return (self.message_id, self.queue_name, self.actor_name, self.priority, self.delay_ms, self.tenant,
                self.topic, self.deadline, self.fingerprint, self.payload)

    def copy_row(self) -> tuple[Any, ...]:
        """The values of a COPY row (`COPY_TYPES`)."""
        return (self.message_id, self.queue_name, self.actor_name, self.priority, self.tenant, self.topic,
                self.deadline, self.payload)

    @property
    def unique_key(self) -> str:
        """The fingerprint of a unique job (only a unique job can be refused as a duplicate)."""
        if self.fingerprint is None:
            raise AssertionError(f"message {self.message_id} is not a unique job")
        return self.fingerprint


class Producer:
    """A broker's enqueue: `PostgresBroker.enqueue` and `enqueue_many` delegate here."""

    def __init__(self, broker: PostgresBroker) -> None:
        self.broker = broker
        self._overlay: tuple[dict[str, str | None], Settings] | None = None
        self._sender: Sender | None = None
        self._sender_pid = -1
        self._sender_lock = threading.Lock()
        self._hooked: tuple[int, int, bool] | None = None  # (id, length) of the middleware list, answer

    # -- settings and hooks ------------------------------------------------------------
    def enqueue_settings(self) -> Settings:
        """The settings enqueue checks against (queue_depth, tenant_policy, max_message_bytes,
        durability): the broker's, with the runtime settings (`neuron-tasks config set`) on top. A
        worker process applies those live (reload_settings); any other process reads them here,
        re-read at most every two seconds (runtime.values_for)."""
        b = self.broker
        if b._listener is not None:
            return b.settings
        from neuron_tasks.core import runtime

        values = runtime.values_for(b.url)
        overlay = self._overlay
        if overlay is not None and overlay[0] is values:
            return overlay[1]
        try:
            merged = runtime.effective(b.settings, values)
        except ConfigurationError as exc:
            log.warning("enqueue goes on without the runtime settings: %s", exc)
            merged = b.settings
        self._overlay = (values, merged)
        return merged

    def hooked(self) -> bool:
        """Whether any middleware listens to enqueue hooks (Dramatiq's defaults do not): enqueue
        then skips calling every middleware for every message."""
        middleware = self.broker.middleware
        known = self._hooked
        if known is not None and known[0] == id(middleware) and known[1] == len(middleware):
            return known[2]
        answer = any(
            type(m).before_enqueue is not Middleware.before_enqueue
            or type(m).after_enqueue is not Middleware.after_enqueue
            for m in middleware
        )
        self._hooked = (id(middleware), len(middleware), answer)
        return answer

    def row(self, message: Message[Any], delay: int | float | None, settings: Settings) -> NewMessage:
        return self._new(message, prepare_for(self.broker, message, delay, settings=settings))

    def rows(self, messages: Sequence[Message[Any]], delay: int | float | None, settings: Settings) -> list[NewMessage]:
        """`row` for each message, with what is the same for the whole batch (settings, policies, an
        actor's lookup, the check of a queue and actor name) worked out once. Every message is still
        checked in full against its own options, arguments and size."""
        b = self.broker
        actors, policies = b.actors, b.policies
        refuse = settings.tenant_policy == "refuse"
        tenant_known = (lambda name: policies.tenant(name) is not None) if refuse else None
        topic, max_bytes = policies.topic, settings.max_message_bytes
        checked: set[tuple[str, str]] = set()
        new = self._new
        return [
            new(m, prepare(m, actor=actors.get(m.actor_name), delay=delay, topic=topic, tenant_known=tenant_known,
                           max_message_bytes=max_bytes, checked=checked))
            for m in messages
        ]

    @staticmethod
    def _new(message: Message[Any], p: Prepared) -> NewMessage:
        return NewMessage(
            message_id=message.message_id,
            queue_name=q_name(message.queue_name),
            actor_name=message.actor_name,
            priority=p.columns.priority,
            delay_ms=p.columns.delay_ms,
            tenant=p.columns.tenant,
            topic=p.columns.topic,
            deadline=p.columns.deadline,
            fingerprint=p.fingerprint,
            on_duplicate=p.on_duplicate,
            payload=p.payload,
        )

    # -- one message ----------------------------------------------------------------------
    def enqueue(self, message: Message[Any], delay: int | None) -> Message[Any]:
        b = self.broker
        if isinstance(message, PgMessageProxy) and message.is_in_flight():
            b.emit_before("enqueue", message, delay)
            message.schedule_retry(message.message.encode(), bounded_delay_ms(delay))
            b.emit_after("enqueue", message, delay)
            return message.message
        settings = self.enqueue_settings()
        deadline = time.monotonic() + settings.enqueue_timeout_s  # DatabaseUnavailable after that, whatever happens
        row = self.row(message, delay, settings)
        hooked = self.hooked()
        if hooked:
            b.emit_before("enqueue", message, delay)
        self.reserve_depth(row.queue_name, 1, deadline, settings)
        level = settings.durability_of(row.queue_name)
        volatile = level == "volatile" and row.fingerprint is None
        item = Outgoing(row, deadline, durable=level == "durable", waited=not volatile)
        self.sender().send(item)
        if item.error is not None:
            raise item.error
        if item.waited and not item.inserted:
            if row.on_duplicate == "existing" and item.existing is not None:
                return message.copy(message_id=item.existing)
            raise DuplicateJob(row.unique_key, item.existing)
        if hooked:
            b.emit_after("enqueue", message, delay)
        return message

    def sender(self) -> Sender:
        """This process's sender (a forked child starts its own)."""
        if self._sender_pid != os.getpid():
            with self._sender_lock:
                if self._sender_pid != os.getpid():
                    b = self.broker
                    self._sender = Sender(lambda durable: b.pool if durable else b.soft_pool, b.where)
                    self._sender_pid = os.getpid()
        assert self._sender is not None
        return self._sender

    def close(self, timeout_s: float) -> None:
        """Write the volatile messages still held (up to `timeout_s`); those that cannot be are logged."""
        sender = self._sender if self._sender_pid == os.getpid() else None
        self._sender, self._sender_pid = None, -1
        if sender is not None:
            left = sender.close(timeout_s)
            if left:
                log.error("%d volatile messages were not written before close (PostgreSQL did not answer)", left)

    # -- many messages --------------------------------------------------------------------
    def enqueue_many(self, messages: Sequence[Message[Any]], delay: int | None) -> list[Message[Any]]:
        if not messages:
            return []
        b = self.broker
        settings = self.enqueue_settings()
        deadline = time.monotonic() + settings.enqueue_timeout_s
        rows = self.rows(messages, delay, settings)
        hooked = self.hooked()
        if hooked:
            for m in messages:
                b.emit_before("enqueue", m, delay)
        per_queue: dict[str, int] = {}
        for r in rows:
            per_queue[r.queue_name] = per_queue.get(r.queue_name, 0) + 1
        for queue_name, n in per_queue.items():
            self.reserve_depth(queue_name, n, deadline, settings)
        durable = any(settings.durability_of(name) == "durable" for name in per_queue)
        pool = b.pool if durable else b.soft_pool
        if all(r.fingerprint is None and r.delay_ms == 0 for r in rows):
            inserted = self._copy(rows, pool, deadline)
        else:
            inserted = self._insert_many(rows, pool, deadline)
        out: list[Message[Any]] = []
        for m, r in zip(messages, rows, strict=True):
            if r.message_id in inserted:
                if hooked:
                    b.emit_after("enqueue", m, delay)
                out.append(m)
            else:
                existing = self.existing(r.unique_key, deadline)
                out.append(m.copy(message_id=existing) if existing else m)
        return out

    def _copy(self, rows: list[NewMessage], pool: Any, deadline: float) -> set[str]:
        """One binary COPY (its own transaction): every row is inserted; the INSERT trigger counts
        them and NOTIFYs once per queue."""

        def copy(timeout: float) -> set[str]:
            with pool.connection(timeout=timeout) as conn, conn.cursor() as cur:
                # bytea's own dumper for the payload (by default a bytea column goes through the
                # DB-API Binary wrapper's, written in Python); on this cursor only.
                cur.adapters.register_dumper(bytes, BytesBinaryDumper)
                with cur.copy(q("copy_messages")) as cp:
                    cp.set_types(COPY_TYPES)
                    write = cp.write_row
                    for r in rows:
                        write(r.copy_row())
            return {r.message_id for r in rows}

        return self.broker._within(copy, what="enqueue_many", deadline=deadline)

    def _insert_many(self, rows: list[NewMessage], pool: Any, deadline: float) -> set[str]:
        each = [r.params() for r in rows]
        params = {key: [p[key] for p in each] for key in each[0]}  # one array per column

        def insert(timeout: float) -> set[str]:
            with pool.connection(timeout=timeout) as conn, conn.transaction(), \
                    conn.cursor(row_factory=scalar_row) as cur:
                inserted = {str(message_id) for message_id in cur.execute(q("insert_messages"), params)}
                for r in rows:
                    if r.message_id not in inserted and r.on_duplicate != "existing":
                        # Roll the whole batch back: nothing is half-enqueued.
                        raise DuplicateJob(r.unique_key, None)
                return inserted

        return self.broker._within(insert, what="enqueue_many", deadline=deadline)

    def existing(self, fingerprint: str, deadline: float | None = None) -> str | None:
        found = self.broker._fetch("live_by_fingerprint", {"fingerprint": fingerprint}, scalar_row,
                                   what="unique job", deadline=deadline)
        return str(found[0]) if found else None

    # -- depth ---------------------------------------------------------------------------
    def reserve_depth(self, queue_name: str, n: int, deadline: float | None = None,
                      settings: Settings | None = None) -> None:
        """Refuse a queue over `queue_depth`. Its count is kept by the database (one read of a few
        counter rows, whatever the backlog); read again whenever the queue is near its depth, and
        at least every DEPTH_RECHECK_S."""
        b = self.broker
        depth = (settings or self.enqueue_settings()).queue_depth
        now = time.monotonic()
        with b._depth_lock:
            known = b._depth.get(queue_name)
            if known and now - known[1] < DEPTH_RECHECK_S and known[0] + n < depth * DEPTH_SLACK:
                b._depth[queue_name] = (known[0] + n, known[1])
                return
        counted = b._fetch("waiting_count", {"queue_name": queue_name}, scalar_row, what="queue depth",
                           deadline=deadline)
        waiting = int(counted[0])
        if waiting + n > depth:
            raise QueueFull(queue_name, depth)
        with b._depth_lock:
            b._depth[queue_name] = (waiting + n, now)

