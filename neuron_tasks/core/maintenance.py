"""The queue's maintenance, in one place: the lease sweeper and the retention of its tables.

Worker processes (their keeper thread) and the scheduler's leader both call these; each is
a plain function of a connection, so it runs wherever the caller holds one.

The sweeper's rule: a lease that expired because PostgreSQL itself was away says nothing about
its worker, so no sweeper reclaims until every live worker cut off by the same outage has had a
full lease to reconnect and renew. A worker's keeper sweeps only after its own connection has
seen the same server (same start, see `server_epoch`) answer without a break for
`lease_s + heartbeat_s` (`Continuity`); the scheduler's tick only once the server has been up
that long. A worker renews its leases first thing after reconnecting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

from neuron_tasks.config import Settings
from neuron_tasks.core import runtime
from neuron_tasks.sql import q

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reclaimed:
    """A message taken back from a worker whose lease expired."""

    id: int
    queue_name: str
    state: str  # pending again, or failed (a poison message)


def sweep(conn: psycopg.Connection[Any], settings: Settings, *, owner: UUID | None = None) -> list[Reclaimed]:
    """Return expired leases' messages to their queues (only `owner`'s when given: a worker known
    dead); dead-letter poison messages; free their topic slots and wake the queues' consumers."""
    # At least one re-run after a crash, even with max_retries=0.
    max_deaths = max(settings.max_retries, 1)
    with conn.cursor(row_factory=class_row(Reclaimed)) as cur:
        rows = cur.execute(q("reclaim_expired"), {"max_deaths": max_deaths, "owner": owner}).fetchall()
    if rows:
        conn.execute(q("free_slots"), {"ids": [r.id for r in rows]})
    for queue_name in sorted({r.queue_name for r in rows if r.state != "failed"}):
        conn.execute(q("notify"), {"queue_name": queue_name})
    if rows:
        poisoned = sum(1 for r in rows if r.state == "failed")
        log.warning("reclaimed %d messages from dead workers (%d dead-lettered as poison)", len(rows), poisoned)
    return rows


def sweep_tick(conn: psycopg.Connection[Any]) -> str:
    """The scheduler's lease sweeper: runs even when no worker is alive, but not before the server
    has been up for a lease and a heartbeat (live workers renew what they hold first)."""
    settings = settings_on(conn)
    held_back = too_soon_to_sweep(conn, settings)
    if held_back is not None:
        return f"skipped: {held_back}"
    return f"reclaimed {len(sweep(conn, settings))}"


def too_soon_to_sweep(conn: psycopg.Connection[Any], settings: Settings) -> str | None:
    """Why a sweeper without a continuous view of its own (the scheduler's tick, a supervisor) must
    not reclaim now: the server restarted, or was promoted from a standby, less than a lease and a
    heartbeat ago. None: it may."""
    up_s = server_epoch(conn).up_s
    if up_s < sweep_after_s(settings):
        return f"the server restarted or was promoted {up_s:.0f} s ago"
    return None


@dataclass(frozen=True, slots=True)
class ServerEpoch:
    """When the server last started (the `server_epoch` query) and how long it has been up."""

    started_at: datetime
    up_s: float


def server_epoch(conn: psycopg.Connection[Any]) -> ServerEpoch:
    with conn.cursor(row_factory=class_row(ServerEpoch)) as cur:
        row = cur.execute(q("server_epoch")).fetchone()
    assert row is not None
    return row


def sweep_after_s(settings: Settings) -> float:
    """How long a sweeper must have seen the server before it may reclaim expired leases."""
    return settings.lease_s + settings.heartbeat_s


class Continuity:
    """How long one process has seen the same server answer without a break: restarted by a
    failed heartbeat, by a new server start, and by a silence of more than `max_gap_s` between
    two successful heartbeats (the process cannot tell what happened meanwhile)."""

    def __init__(self, max_gap_s: float) -> None:
        self.max_gap_s = max_gap_s
        self._epoch: datetime | None = None
        self._since: float | None = None
        self._last: float = 0.0

    def saw(self, epoch: datetime) -> None:
        now = time.monotonic()
        if self._since is None or epoch != self._epoch or now - self._last > self.max_gap_s:
            if self._epoch is not None and epoch != self._epoch:
                log.warning("the database server restarted (it started at %s); this worker sweeps no expired "
                            "lease until every live worker has had a lease to renew its own", epoch)
            self._since = now
            self._epoch = epoch
        self._last = now

    def lost(self) -> None:
        self._since = None

    def seen_for(self) -> float:
        """Seconds of unbroken contact so far (0 when contact is lost)."""
        return 0.0 if self._since is None else time.monotonic() - self._since


def settings_on(conn: psycopg.Connection[Any]) -> Settings:
    """The queue's settings with this database's runtime values on top."""
    return runtime.effective(Settings(), runtime.runtime_values(conn))


def trim_history(conn: psycopg.Connection[Any], settings: Settings | None = None) -> int:
    s = settings or settings_on(conn)
    return conn.execute(q("trim_history"), {"retention_s": s.history_retention_s}).rowcount


def trim_dead_letters(conn: psycopg.Connection[Any], settings: Settings | None = None) -> int:
    s = settings or settings_on(conn)
    return conn.execute(q("trim_dead_letters"), {"retention_s": s.dead_letter_retention_s}).rowcount


def trim_tenant_usage(conn: psycopg.Connection[Any]) -> int:
    return conn.execute(q("trim_tenant_usage")).rowcount
