"""Topics: cluster-wide concurrency, retries, delay between starts, default priority."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from neuron_tasks.core.options import INT32_MAX, INT32_MIN, check_name, finite_number
from neuron_tasks.errors import InvalidOption
from neuron_tasks.sql import q

#: One slot row per unit of concurrency; a delay between starts of at most a day.
MAX_CONCURRENCY = 10_000
MAX_DELAY_S = 86_400


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def set_topic(
    pool: ConnectionPool,
    name: str,
    *,
    concurrency: int | None = None,
    max_retries: int | None = None,
    delay_s: float | None = None,
    priority: int | None = None,
) -> None:
    """Create or change a topic; None = no limit (concurrency, delay) or inherit (retries, priority)."""
    check_name("topic", name)
    if concurrency is not None and (not _int(concurrency) or not 1 <= concurrency <= MAX_CONCURRENCY):
        raise InvalidOption(f"concurrency={concurrency!r} must be an integer from 1 to {MAX_CONCURRENCY}")
    if max_retries is not None and (not _int(max_retries) or not 0 <= max_retries <= INT32_MAX):
        raise InvalidOption(f"retries={max_retries!r} must be an integer from 0 to {INT32_MAX}")
    if delay_s is not None and (not finite_number(delay_s) or not 0 <= delay_s <= MAX_DELAY_S):
        raise InvalidOption(f"delay={delay_s!r} must be from 0 to {MAX_DELAY_S} seconds (a day)")
    if priority is not None and (not _int(priority) or not INT32_MIN <= priority <= INT32_MAX):
        raise InvalidOption(f"priority={priority!r} must be a 32-bit integer (lower runs first)")
    params = {"name": name, "concurrency": concurrency, "max_retries": max_retries, "delay_s": delay_s,
              "priority": priority}
    with pool.connection() as conn, conn.transaction():
        conn.execute(q("topic_upsert"), params)
        conn.execute(q("topic_slots_trim"), params)
        conn.execute(q("topic_slots_fill"), params)


def delete_topic(pool: ConnectionPool, name: str) -> bool:
    with pool.connection() as conn:
        return conn.execute(q("topic_delete"), {"name": name}).rowcount > 0


def topics(pool: ConnectionPool) -> list[dict[str, Any]]:
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(q("topic_overview"))
        return cur.fetchall()
