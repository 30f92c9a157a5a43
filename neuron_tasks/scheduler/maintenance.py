"""Retention: the leader trims every growing table that a part declares, and the fire log."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from neuron_tasks.core import parts
from neuron_tasks.core.runtime import effective, runtime_values
from neuron_tasks.scheduler.node import scalar
from neuron_tasks.scheduler.settings import SchedulerSettings
from neuron_tasks.sql import q

log = logging.getLogger(__name__)


def retention(conn: psycopg.Connection[Any]) -> str:
    """Run every part's retention in the fire's transaction; a table that does not exist (its part
    is not installed in this database) is skipped. Returns `table=rows` for the fire log."""
    done = []
    for part in parts.parts():
        for r in part.retention:
            if not scalar(conn, "sched_table_exists", {"name": r.table}):
                continue
            name = r.table.removeprefix("neuron_tasks.")
            try:
                with conn.transaction():  # a savepoint: one failing trim does not undo the others
                    deleted = int(parts.loader(r.run)(conn))
            except psycopg.DatabaseError as exc:
                log.warning("retention of %s failed (%s); the next tick tries again", r.table, exc)
                done.append(f"{name}=failed")
                continue
            done.append(f"{name}={deleted}")
    return " ".join(done)


def trim_fires(conn: psycopg.Connection[Any]) -> int:
    s = effective(SchedulerSettings(), runtime_values(conn))
    return conn.execute(q("sched_trim_fires"), {"retention_s": s.scheduler_fire_retention_s}).rowcount


def trim_nodes(conn: psycopg.Connection[Any]) -> int:
    return conn.execute(q("sched_trim_nodes")).rowcount
