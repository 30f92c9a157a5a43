"""Shared helpers of the dashboard tests: an app on the test database, rows made directly in SQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from dramatiq.message import Message
from psycopg.types.json import Jsonb
from starlette.testclient import TestClient

from neuron_tasks.dashboard.app import create_app
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool


@contextmanager
def client(url: str, **settings: Any) -> Iterator[TestClient]:
    pool = make_pool(url, max_size=4, name="neuron_tasks-dashboard-test")
    try:
        app = create_app(pool, DashboardSettings(**settings))
        with TestClient(app, base_url="http://127.0.0.1") as c:
            yield c
    finally:
        pool.close()


def enqueue(url: str, actor: str, args: list[Any], *, queue: str = "default", tenant: str | None = None,
            topic: str | None = None, priority: int = 0, failed: bool = False) -> int:
    """A pending message inserted as the broker would (Dramatiq JSON payload); returns its row id.
    With `failed`, it is a dead letter from the start (no running worker can claim it first).

    Inserted directly so these tests do not depend on other parts' enqueue rules (known topics)."""
    options = {k: v for k, v in {"tenant": tenant, "topic": topic}.items() if v is not None}
    message = Message(queue_name=queue, actor_name=actor, args=tuple(args), kwargs={}, options=options)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, priority, tenant, topic, payload,"
            " state, failed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END) RETURNING id",
            (message.message_id, queue, actor, priority, tenant, topic, message.encode(),
             "failed" if failed else "pending", failed)).fetchone()
    assert row is not None
    return int(row[0])


def kill(url: str, row_id: int, *, error: str = "ValueError: boom", errors: Any = None) -> None:
    """Make a message a dead letter, with an `errors` entry (or the given value)."""
    entries = errors if errors is not None else [
        {"at": 1_790_000_000.5, "attempt": 1, "type": "ValueError", "message": "boom",
         "traceback": "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom\n"}]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE neuron_tasks.messages SET state = 'failed', failed_at = now(), retries = 1, attempts = 1,"
            " last_error = %s, errors = %s WHERE id = %s", (error, Jsonb(entries), row_id))


def csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def states(url: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT id, state FROM neuron_tasks.messages").fetchall())
