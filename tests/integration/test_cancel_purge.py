"""Cancel and purge, as an operator runs them: `neuron-tasks messages cancel`, `neuron-tasks queues
purge`, the SQL functions behind them (for neuron_tasks_admin only), and a running job that asks
`neuron_tasks.cancelled()`."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import uuid
from typing import Any

import dramatiq
import psycopg
import pytest

import neuron_tasks
from neuron_tasks import PostgresBroker
from neuron_tasks.sql import q
from tests.conftest import ROOT
from tests.integration.dashboard_helpers import enqueue
from tests.integration.test_least_privilege import login_role


def run(url: str, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "neuron_tasks.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, stdin=stdin)


def ok_json(url: str, *args: str) -> Any:
    proc = run(url, *args, "--json")
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def error_line(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert proc.returncode == code and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def message_id(url: str, row_id: int) -> str:
    [(mid,)] = rows(url, "SELECT message_id FROM neuron_tasks.messages WHERE id = %s", row_id)
    return str(mid)


def states(url: str, queue: str) -> list[str]:
    return [r[0] for r in rows(url, "SELECT state FROM neuron_tasks.messages WHERE queue_name = %s ORDER BY id",
                               queue)]


def history(url: str) -> dict[str, str]:
    return dict(rows(url, "SELECT message_id, outcome FROM neuron_tasks.messages_history"))


def wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def claim(url: str, row_id: int) -> uuid.UUID:
    """Make a message running under a live lease of a made-up worker."""
    owner = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE neuron_tasks.messages SET state = 'running', lease_owner = %s, attempts = 1,"
                     " started_at = now(), lease_expires_at = now() + interval '1 minute' WHERE id = %s",
                     (owner, row_id))
    return owner


# -- messages cancel ----------------------------------------------------------------------------
def test_cancel_a_waiting_message_removes_it_and_records_it_cancelled(clean_db: str) -> None:
    first, second = enqueue(clean_db, "slow", [1], queue="cq"), enqueue(clean_db, "slow", [2], queue="cq")
    first_id = message_id(clean_db, first)
    assert ok_json(clean_db, "messages", "cancel", first_id) == {"cancelled": 1, "marked": 0}
    assert states(clean_db, "cq") == ["pending"]
    assert history(clean_db) == {first_id: "cancelled"}
    [queue] = ok_json(clean_db, "status")["queues"]
    assert (queue["pending"], queue["cancelled"], queue["finished"]) == (1, 1, 0)
    assert dict(rows(clean_db, "SELECT status, jobs FROM neuron_tasks.job_counts"))["cancelled"] == 1
    # by row id too, and the plain output says what happened
    proc = run(clean_db, "messages", "cancel", str(second))
    assert proc.returncode == 0 and "cancelled 1 waiting message(s)" in proc.stdout, proc.stderr
    assert states(clean_db, "cq") == [] and sorted(history(clean_db).values()) == ["cancelled", "cancelled"]


def test_cancel_an_unknown_id_is_one_error_and_cancels_nothing(clean_db: str) -> None:
    row = enqueue(clean_db, "slow", [1], queue="cq")
    dead = enqueue(clean_db, "slow", [2], queue="cq", failed=True)
    line = error_line(run(clean_db, "messages", "cancel", message_id(clean_db, row), "no-such-message"))
    assert line.startswith("error: no waiting or running message no-such-message") and "nothing was cancelled" in line
    line = error_line(run(clean_db, "messages", "cancel", message_id(clean_db, row), str(dead)))
    assert "dead letter" in line and "dead-letters purge" in line
    assert states(clean_db, "cq") == ["pending", "failed"] and history(clean_db) == {}
    assert run(clean_db, "messages", "cancel").returncode == 2  # no id: a usage error


def test_cancel_a_running_message_marks_it_and_its_end_is_recorded_cancelled(clean_db: str) -> None:
    row = enqueue(clean_db, "slow", [1], queue="cq")
    owner = claim(clean_db, row)
    mid = message_id(clean_db, row)
    assert ok_json(clean_db, "messages", "cancel", mid) == {"cancelled": 0, "marked": 1}
    [(state, marked)] = rows(clean_db, "SELECT state, cancel_requested_at IS NOT NULL FROM neuron_tasks.messages"
                                       " WHERE id = %s", row)
    assert (state, marked) == ("running", True)  # never stopped half-way
    with psycopg.connect(clean_db, autocommit=True) as conn:  # the worker acks it as it always does
        assert conn.execute(q("ack"), {"ids": [row], "owner": owner}).fetchall() == [(row,)]
    assert history(clean_db) == {mid: "cancelled"} and states(clean_db, "cq") == []


def test_a_cancelled_running_message_that_fails_is_not_retried_nor_dead_lettered(clean_db: str) -> None:
    row = enqueue(clean_db, "slow", [1], queue="cq")
    owner = claim(clean_db, row)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.topics (name, concurrency) VALUES ('gpu', 1)")
        conn.execute("INSERT INTO neuron_tasks.topic_slots (topic, slot, holder, acquired_at)"
                     " VALUES ('gpu', 1, %s, now())", (row,))
    assert ok_json(clean_db, "messages", "cancel", str(row)) == {"cancelled": 0, "marked": 1}
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(q("retry"), {"id": row, "owner": owner, "payload": b"{}", "delay_ms": 0,
                                  "error": "RuntimeError: stopped", "entry": "[]"})
    assert states(clean_db, "cq") == []
    assert rows(clean_db, "SELECT outcome, last_error FROM neuron_tasks.messages_history") == [
        ("cancelled", "RuntimeError: stopped")]
    assert rows(clean_db, "SELECT holder FROM neuron_tasks.topic_slots") == [(None,)]  # its slot is free


def test_a_running_job_sees_its_cancel_mark(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    url = broker.url

    @dramatiq.actor(queue_name="cancel_me", max_retries=3)
    def crunch(key: str) -> str:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO public.test_runs (key) VALUES (%s)", (f"{key}:started",))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if neuron_tasks.cancelled():
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("INSERT INTO public.test_runs (key) VALUES (%s)", (f"{key}:saw cancel",))
                if key == "raise":
                    raise RuntimeError("cancelled, stopping")
                return "stopped early"
            time.sleep(0.05)
        return "ran to the end"

    assert neuron_tasks.cancelled() is False  # outside a job
    for key in ("return", "raise"):
        msg = crunch.send(key)
        assert wait_for(lambda k=key: rows(url, "SELECT 1 FROM public.test_runs WHERE key = %s", f"{k}:started"))
        assert ok_json(url, "messages", "cancel", msg.message_id) == {"cancelled": 0, "marked": 1}
        assert wait_for(lambda k=key: rows(url, "SELECT 1 FROM public.test_runs WHERE key = %s", f"{k}:saw cancel"))
        broker.join("cancel_me", timeout=10_000, fail_fast=False)
        assert history(url)[msg.message_id] == "cancelled"
    assert states(url, "cancel_me") == []  # the one that raised was not retried
    [(error,)] = rows(url, "SELECT last_error FROM neuron_tasks.messages_history WHERE last_error IS NOT NULL")
    assert "cancelled, stopping" in error


# -- queues purge -------------------------------------------------------------------------------
def test_purge_deletes_waiting_messages_matching_the_filters(clean_db: str) -> None:
    for actor, tenant in (("a", "t1"), ("a", "t2"), ("b", "t1"), ("b", "t2")):
        enqueue(clean_db, actor, [1], queue="pq", tenant=tenant)
    dead = enqueue(clean_db, "a", [1], queue="pq", failed=True)
    running = enqueue(clean_db, "a", [2], queue="pq")
    claim(clean_db, running)
    other = enqueue(clean_db, "a", [1], queue="other")

    line = error_line(run(clean_db, "queues", "purge", "pq", "--actor", "a"), code=2)
    assert "this would delete 2 pending/retrying message(s) of queue pq, actor a" in line and "--yes" in line
    assert len(states(clean_db, "pq")) == 6
    assert ok_json(clean_db, "queues", "purge", "pq", "--actor", "a", "--tenant", "t1", "--yes") == {
        "queue": "pq", "purged": 1, "marked": 0}
    assert ok_json(clean_db, "queues", "purge", "pq", "--yes") == {"queue": "pq", "purged": 3, "marked": 0}
    # the dead letter and the running message are left alone, and so is the other queue
    assert [r[0] for r in rows(clean_db, "SELECT id FROM neuron_tasks.messages ORDER BY id")] == [dead, running, other]
    assert ok_json(clean_db, "queues", "purge", "pq", "--state", "failed", "--yes") == {
        "queue": "pq", "purged": 1, "marked": 0}
    assert ok_json(clean_db, "queues", "purge", "pq", "--state", "running", "--yes") == {
        "queue": "pq", "purged": 0, "marked": 1}
    assert rows(clean_db, "SELECT state, cancel_requested_at IS NOT NULL FROM neuron_tasks.messages"
                          " WHERE id = %s", running) == [("running", True)]
    assert history(clean_db) == {}  # purged messages leave no history
    proc = run(clean_db, "queues", "purge", "pq", "--state", "finished", "--yes")
    assert proc.returncode == 2 and "unknown state finished" in proc.stderr


def test_purge_on_a_terminal_asks_and_defaults_to_no(clean_db: str) -> None:
    enqueue(clean_db, "a", [1], queue="pq")
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"\n")
        proc = run(clean_db, "queues", "purge", "pq", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode != 0 and "Delete 1 pending/retrying message(s) of queue pq? [y/N]" in proc.stdout
    assert states(clean_db, "pq") == ["pending"]


# -- the SQL functions --------------------------------------------------------------------------
def test_cancel_and_purge_functions_are_for_admins_only(clean_db: str) -> None:
    row = enqueue(clean_db, "a", [1], queue="pq")
    mid = message_id(clean_db, row)
    for group in ("neuron_tasks_producer", "neuron_tasks_worker"):
        with login_role(clean_db, group) as role, psycopg.connect(role.url, autocommit=True) as conn:
            for statement, params in (("SELECT * FROM neuron_tasks.cancel_messages(%s)", ([mid],)),
                                      ("SELECT * FROM neuron_tasks.purge_queue(%s)", ("pq",))):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement, params)
    with login_role(clean_db, "neuron_tasks_admin") as role:
        line = error_line(run(role.url, "messages", "cancel", "no-such-message"))
        assert "no waiting or running message no-such-message" in line
        with psycopg.connect(role.url, autocommit=True) as conn:
            assert conn.execute("SELECT * FROM neuron_tasks.cancel_messages(%s)", ([mid],)).fetchall() == [(1, 0)]
            enqueue(clean_db, "a", [2], queue="pq")
            assert conn.execute("SELECT * FROM neuron_tasks.purge_queue('pq', states => %s)",
                                (["pending"],)).fetchall() == [(1, 0)]
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown state bogus"):
                conn.execute("SELECT * FROM neuron_tasks.purge_queue('pq', states => %s)", (["bogus"],))
    with login_role(clean_db, "neuron_tasks_producer") as role:
        line = error_line(run(role.url, "queues", "purge", "pq", "--yes"))
        assert "permission denied" in line and "neuron_tasks_admin" in line


# -- the dashboard's buttons --------------------------------------------------------------------
def test_dashboard_cancel_and_purge_buttons_need_the_csrf_field(clean_db: str) -> None:
    from tests.integration.dashboard_helpers import client, csrf

    first, second = enqueue(clean_db, "a", [1], queue="dq"), enqueue(clean_db, "a", [2], queue="dq")
    enqueue(clean_db, "b", [3], queue="dq")
    with client(clean_db) as c:
        page = c.get("/parts/queue-admin")
        assert page.status_code == 200 and 'id="purge-form"' in page.text and "dq" in page.text
        token = csrf(page.text)
        assert c.post("/parts/queue-admin/cancel", data={"name": str(first)}).status_code == 403
        done = c.post("/parts/queue-admin/cancel", data={"name": f"{first} no-such", "csrf": token})
        assert done.status_code == 200 and "Nothing was done: no waiting or running message no-such" in done.text
        done = c.post("/parts/queue-admin/cancel", data={"name": str(first), "csrf": token})
        assert "Cancelled 1 waiting message(s)" in done.text
        done = c.post("/parts/queue-admin/purge", data={"queue": "dq", "actor": "a", "csrf": token})
        assert "tick the confirm box" in done.text and len(states(clean_db, "dq")) == 2
        done = c.post("/parts/queue-admin/purge", data={"queue": "dq", "actor": "a", "confirm": "yes",
                                                        "state_pending": "1", "csrf": token})
        assert "Purged 1 pending message(s) of queue dq" in done.text
    assert [r[0] for r in rows(clean_db, "SELECT actor_name FROM neuron_tasks.messages")] == ["b"]
    assert second not in [r[0] for r in rows(clean_db, "SELECT id FROM neuron_tasks.messages")]
