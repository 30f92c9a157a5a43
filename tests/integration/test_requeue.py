"""A requeued dead letter gets its full retries again (from the admin API, the CLI and the dashboard)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
import psycopg
from dramatiq.message import Message
from starlette.testclient import TestClient
from typer.testing import CliRunner

from neuron_tasks import PostgresBroker
from neuron_tasks.core.admin import Repo, without_failures
from neuron_tasks.dashboard.app import create_app
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool
from tests.integration.dashboard_helpers import csrf


@contextmanager
def dashboard(url: str) -> Iterator[TestClient]:
    """The dashboard app on the test database, asked by the name it answers to (127.0.0.1:port)."""
    pool = make_pool(url, max_size=4, name="neuron_tasks-dashboard-test")
    try:
        app = create_app(pool, DashboardSettings())
        with TestClient(app, base_url=f"http://127.0.0.1:{DashboardSettings().dashboard_port}") as c:
            yield c
    finally:
        pool.close()


def _wait(check, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _dead(url: str, message_id: str) -> tuple[int, int] | None:
    """(attempts, retries) of the message once it is a dead letter."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT attempts, retries FROM neuron_tasks.messages WHERE message_id = %s"
                           " AND state = 'failed'", (message_id,)).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def test_without_failures_removes_the_retry_count_from_the_payload() -> None:
    message = Message(queue_name="default", actor_name="a", args=(1,), kwargs={},
                      options={"retries": 3, "traceback": "tb", "requeue_timestamp": 1, "max_retries": 3,
                               "tenant": "acme"})
    cleaned = Message.decode(without_failures(message.encode()))
    assert cleaned.options == {"max_retries": 3, "tenant": "acme"}
    assert (cleaned.message_id, cleaned.args) == (message.message_id, (1,))


def test_requeued_dead_letter_runs_its_full_retries_again(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    runs: list[int] = []

    @dramatiq.actor(max_retries=3)
    def always_fails(n: int) -> None:
        runs.append(n)
        raise ValueError("still broken")

    sent = always_fails.send(1)
    assert _wait(lambda: _dead(broker.url, sent.message_id), "the first dead letter") == (4, 3)
    assert len(runs) == 4

    repo = Repo(broker.pool)
    assert repo.requeue([sent.message_id]) == [sent.message_id]
    assert _wait(lambda: _dead(broker.url, sent.message_id), "the dead letter after the requeue") == (4, 3)
    assert len(runs) == 8, "a requeued dead letter runs 1 + max_retries times again"

    from neuron_tasks.cli.app import app

    result = CliRunner().invoke(app, ["--database-url", broker.url, "dead-letters", "requeue", sent.message_id])
    assert result.exit_code == 0, result.output
    assert "requeued 1 message" in result.output
    assert _wait(lambda: _dead(broker.url, sent.message_id), "the dead letter after the CLI requeue") == (4, 3)
    assert len(runs) == 12, "the CLI requeue restarts the retries too"

    row_id = repo.message(sent.message_id)["id"]  # type: ignore[index]
    with dashboard(broker.url) as c:
        token = csrf(c.get("/dead-letters").text)
        answer = c.post("/dead-letters/action", data={"csrf": token, "requeue_one": str(row_id)})
    assert answer.status_code == 200 and "Requeued 1 dead letter" in answer.text
    assert _wait(lambda: _dead(broker.url, sent.message_id), "the dead letter after the dashboard requeue") == (4, 3)
    assert len(runs) == 16, "the dashboard's Requeue restarts the retries too"
