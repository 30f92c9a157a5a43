"""Topics: cluster-wide concurrency, retries, delay between starts, default priority."""

from __future__ import annotations

import math
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from neuron_tasks.core.options import check_name
from neuron_tasks.errors import InvalidOption
from neuron_tasks.sql import q


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
    if concurrency is not None and concurrency < 1:
        raise InvalidOption(f"concurrency={concurrency} must be at least 1")
    if max_retries is not None and max_retries < 0:
        raise InvalidOption(f"retries={max_retries} must be >= 0")
    if delay_s is not None and (not math.isfinite(delay_s) or delay_s < 0):
        raise InvalidOption(f"delay={delay_s} must be >= 0 seconds")
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
