"""The queue's maintenance, in one place: the lease sweeper and the retention of its tables.

Worker processes (their keeper thread) and the scheduler's leader both call these; each is
a plain function of a connection, so it runs wherever the caller holds one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

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


def sweep(conn: psycopg.Connection[Any], settings: Settings) -> list[Reclaimed]:
    """Return expired leases' messages to their queues; dead-letter poison messages; free their
    topic slots and wake the queues' consumers."""
    # At least one re-run after a crash, even with max_retries=0.
    max_deaths = max(settings.max_retries, 1)
    with conn.cursor(row_factory=class_row(Reclaimed)) as cur:
        rows = cur.execute(q("reclaim_expired"), {"max_deaths": max_deaths}).fetchall()
    if rows:
        conn.execute(q("free_slots"), {"ids": [r.id for r in rows]})
    for queue_name in sorted({r.queue_name for r in rows if r.state != "failed"}):
        conn.execute(q("notify"), {"queue_name": queue_name})
    if rows:
        poisoned = sum(1 for r in rows if r.state == "failed")
        log.warning("reclaimed %d messages from dead workers (%d dead-lettered as poison)", len(rows), poisoned)
    return rows


def sweep_tick(conn: psycopg.Connection[Any]) -> str:
    """The scheduler's lease sweeper: runs even when no worker is alive."""
    return f"reclaimed {len(sweep(conn, settings_on(conn)))}"


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
