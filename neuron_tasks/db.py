"""Connections: a psycopg 3 pool per process; an embedded PostgreSQL when no URL is set."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from neuron_tasks import embedded
from neuron_tasks.config import Settings
from neuron_tasks.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

URL_ENV = "NEURON_TASKS_DATABASE_URL"


def resolve_url(settings: Settings, *, export: bool = False) -> str:
    """The database URL: the configured one, else the embedded server's (started on first use).

    With `export`, the URL is put in the environment so child processes use the same server.
    """
    url = settings.database_url or embedded.start(settings.embedded_dir)
    if export:
        os.environ[URL_ENV] = url
    return url


def make_pool(
    url: str,
    *,
    max_size: int = 16,
    name: str = "neuron_tasks",
    durable: bool = True,
    statement_timeout_ms: int = 0,
    idle_in_transaction_timeout_ms: int = 0,
) -> ConnectionPool:
    """An autocommit pool; connections identify themselves in pg_stat_activity.

    `durable=False` commits without waiting for the WAL flush (synchronous_commit=off): for soft
    state a crash may roll back by a fraction of a second (topic slots, token buckets).
    """
    # JIT compiles our small OLTP statements for ~1 s when their estimates look big: off.
    options = "-c jit=off" + ("" if durable else " -c synchronous_commit=off")
    # Connection hygiene: no statement of ours runs forever, no transaction is left open.
    options += f" -c statement_timeout={int(statement_timeout_ms)}"
    options += f" -c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_ms)}"
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": True, "application_name": name, "options": options},
        name=name,
        open=False,
        reconnect_timeout=60,
    )
    try:
        pool.open(wait=True, timeout=15)
    except Exception as exc:
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from exc
    return pool


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable url>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(info.items()))


def retrying(fn: Callable[[], T], *, what: str, attempts: int = 6, first_delay: float = 0.05) -> T:
    """Run `fn`, retrying on lost connections (server restart, pg_terminate_backend).

    Callers pass idempotent work or accept at-least-once on the rare lost commit reply.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except psycopg.OperationalError as exc:
            if attempt == attempts:
                raise
            log.warning("%s: lost the database connection (%s); retrying in %.2fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 3, 2.0)
    raise AssertionError("unreachable")
