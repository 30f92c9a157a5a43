"""sql_task on a real PostgreSQL with real LOGIN roles and a real worker: off unless enabled; run
as the low-privilege role neuron_tasks_sql_runner inside a SECURITY DEFINER function (no SET ROLE
out of it); only messages enqueued by members of neuron_tasks_sql_submitter are honoured (the
enqueuer is recorded by the database, so a raw INSERT cannot forge it); one statement, no
transaction control, a time limit the statement cannot lift, a capped result."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq.message import Message
from psycopg import sql
from psycopg.types.json import Jsonb

from neuron_tasks import PostgresBroker
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.testing import truncate
from tests.integration.test_least_privilege import Role, login_role, scalar, wait_for

RUNNER = "neuron_tasks_sql_runner"
ENABLED = LlmSettings(llm_sql_task_enabled=True, llm_sql_task_timeout_ms=1500, llm_sql_task_max_rows=50)


@contextmanager
def sql_worker(broker: PostgresBroker, settings: LlmSettings) -> Iterator[ModuleType]:
    """The LLM actors declared on this test's broker, with `settings`, and a worker running them."""
    truncate(broker.url, "llm")
    name = "neuron_tasks.llm.actors"
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    module.configure(settings, pool=broker.pool)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        yield module
    finally:
        worker.stop(timeout=5000)


@pytest.fixture
def enabled(broker: PostgresBroker) -> Iterator[ModuleType]:
    with sql_worker(broker, ENABLED) as actors:
        yield actors


@pytest.fixture
def submitter(clean_db: str) -> Iterator[Role]:
    with login_role(clean_db, "neuron_tasks_producer", "neuron_tasks_sql_submitter") as role:
        yield role


@pytest.fixture
def producer(clean_db: str) -> Iterator[Role]:
    with login_role(clean_db, "neuron_tasks_producer") as role:
        yield role


def enqueue(url: str, statement: str, *args: Any, **kwargs: Any) -> str:
    """A sql_task message enqueued from SQL by the role of `url`; its message id."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT neuron_tasks.enqueue('tasks', 'sql_task', %s, %s)",
                           (Jsonb([statement, *args]), Jsonb(kwargs))).fetchone()
    assert row is not None
    return str(row[0])


def dead_letter(url: str, message_id: str, timeout: float = 20.0) -> str:
    """The error of the message once it is a dead letter."""
    def failed() -> Any:
        return scalar(url, "SELECT last_error FROM neuron_tasks.messages WHERE message_id = %s AND state = 'failed'",
                      message_id)
    error = wait_for(failed, timeout)
    assert error, f"message {message_id} is not a dead letter: " + str(scalar(
        url, "SELECT state || ' ' || coalesce(last_error, '') FROM neuron_tasks.messages WHERE message_id = %s",
        message_id))
    return str(error)


def result(message_id: str, timeout_ms: int = 20_000) -> Any:
    message = Message(queue_name="tasks", actor_name="sql_task", args=(), kwargs={}, options={},
                      message_id=message_id)
    return message.get_result(block=True, timeout=timeout_ms)


def is_superuser(url: str, role: str) -> bool:
    return bool(scalar(url, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", role))


# -- off unless enabled ---------------------------------------------------------------------------
def test_sql_task_is_off_by_default_and_dead_letters_saying_so(broker: PostgresBroker, clean_db: str) -> None:
    assert LlmSettings().llm_sql_task_enabled is False
    with sql_worker(broker, LlmSettings()):
        message_id = enqueue(clean_db, "INSERT INTO public.test_runs (key) VALUES ('off')")
        error = dead_letter(clean_db, message_id)
    assert "sql_task is off" in error and "NEURON_TASKS_LLM_SQL_TASK_ENABLED" in error
    assert scalar(clean_db, "SELECT count(*) FROM public.test_runs") == 0


# -- who may submit -------------------------------------------------------------------------------
def test_a_producer_cannot_make_itself_superuser(enabled: ModuleType, producer: Role, clean_db: str) -> None:
    message_id = enqueue(producer.url, f'ALTER ROLE "{producer.name}" SUPERUSER')
    error = dead_letter(clean_db, message_id)
    assert "neuron_tasks_sql_submitter" in error and producer.name in error
    time.sleep(0.5)
    assert not is_superuser(clean_db, producer.name)


def test_a_raw_insert_cannot_forge_the_enqueuer(enabled: ModuleType, clean_db: str) -> None:
    with login_role(clean_db, "neuron_tasks_worker") as forger:
        payload = Message(queue_name="tasks", actor_name="sql_task", args=(f'ALTER ROLE "{forger.name}" SUPERUSER',),
                          kwargs={}, options={}).encode()
        message_id = "forged-" + forger.name
        with psycopg.connect(forger.url, autocommit=True) as conn:
            conn.execute("INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload, enqueued_by)"
                         " VALUES (%s, 'tasks', 'sql_task', %s, 'postgres')", (message_id, payload))
        error = dead_letter(clean_db, message_id)
        assert "neuron_tasks_sql_submitter" in error and forger.name in error
        assert not is_superuser(clean_db, forger.name)


def test_even_a_submitter_runs_as_the_low_privilege_runner(enabled: ModuleType, submitter: Role,
                                                           clean_db: str) -> None:
    message_id = enqueue(submitter.url, f'ALTER ROLE "{submitter.name}" SUPERUSER')
    refusal = dead_letter(clean_db, message_id)
    # PostgreSQL 15 says "must be superuser to alter superuser roles", 16 and later "permission denied".
    assert "superuser" in refusal or "permission denied" in refusal, refusal
    assert not is_superuser(clean_db, submitter.name)
    who = enqueue(submitter.url, "SELECT current_user, session_user", fetch=5)
    assert result(who)["rows"][0][0] == RUNNER
    for statement in ("SET ROLE postgres", "RESET ROLE", "SELECT set_config('role', 'postgres', false)",
                      "DO $$ BEGIN RESET ROLE; EXECUTE 'ALTER ROLE postgres NOSUPERUSER'; END $$",
                      "ALTER FUNCTION neuron_tasks.sql_task_run_v1(text, integer, integer) SECURITY INVOKER",
                      "INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload) "
                      "VALUES ('x', 'tasks', 'sql_task', '\\x00')"):
        error = dead_letter(clean_db, enqueue(submitter.url, statement))
        assert "sql_task" in error and ("role" in error or "permission denied" in error), (statement, error)


# -- the statement cannot disarm its guards -------------------------------------------------------
def test_one_statement_no_transaction_control(enabled: ModuleType, submitter: Role, clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT INSERT, SELECT ON public.test_runs TO {}").format(sql.Identifier(RUNNER)))
    try:
        two = enqueue(submitter.url, "INSERT INTO public.test_runs (key) VALUES ('a'); "
                                     "INSERT INTO public.test_runs (key) VALUES ('b')")
        assert "one statement" in dead_letter(clean_db, two)
        empty = enqueue(submitter.url, "-- nothing")
        assert "one statement" in dead_letter(clean_db, empty)
        for statement in ("COMMIT", "ROLLBACK", "SAVEPOINT s", "BEGIN"):
            assert "sql_task" in dead_letter(clean_db, enqueue(submitter.url, statement))
        assert scalar(clean_db, "SELECT count(*) FROM public.test_runs") == 0
        one = enqueue(submitter.url, "INSERT INTO public.test_runs (key) VALUES (%s), (%s)", ["x", "y"])
        assert result(one) == {"rowcount": 2}
    finally:
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute(sql.SQL("REVOKE ALL ON public.test_runs FROM {}").format(sql.Identifier(RUNNER)))


@pytest.mark.parametrize("statement", [
    "SELECT set_config('statement_timeout', '0', true), pg_sleep(30)",
    "DO $$ BEGIN SET LOCAL statement_timeout = 0; PERFORM pg_sleep(30); END $$",
    "DO $$ BEGIN SET statement_timeout = 0; PERFORM pg_sleep(30); END $$",
    # a statement that catches its own cancellation: the worker ends its session instead
    "DO $$ BEGIN FOR i IN 1..300 LOOP BEGIN PERFORM pg_sleep(0.1); EXCEPTION WHEN query_canceled THEN NULL; END; "
    "END LOOP; END $$",
])
def test_the_time_limit_cannot_be_lifted(enabled: ModuleType, submitter: Role, clean_db: str,
                                         statement: str) -> None:
    started = time.monotonic()
    message_id = enqueue(submitter.url, statement)
    error = dead_letter(clean_db, message_id, timeout=25)
    took = time.monotonic() - started
    assert "1500 ms" in error, error
    assert took < 8, f"ran {took:.1f}s past a 1.5 s limit"


def test_a_caller_may_only_lower_the_time_limit(enabled: ModuleType, submitter: Role, clean_db: str) -> None:
    started = time.monotonic()
    message_id = enqueue(submitter.url, "SELECT pg_sleep(30)", timeout_ms=600_000)
    assert "1500 ms" in dead_letter(clean_db, message_id, timeout=25)
    assert time.monotonic() - started < 8


# -- an allowed statement --------------------------------------------------------------------------
def test_an_allowed_select_runs_and_its_result_is_capped(enabled: ModuleType, submitter: Role,
                                                        clean_db: str) -> None:
    message_id = enqueue(submitter.url, "SELECT g, 'row ' || g AS label FROM generate_series(1, 100000) AS g",
                         fetch=1_000_000)
    out = result(message_id)
    assert out["columns"] == ["g", "label"]
    assert len(out["rows"]) == 50 and out["rows"][0] == [1, "row 1"]
    assert out["rowcount"] == 100000 and out["truncated"] is True
    small = enqueue(submitter.url, "SELECT 1 AS one", fetch=10)
    assert result(small) == {"rowcount": 1, "rows": [[1]], "columns": ["one"], "truncated": False}
    counted = enqueue(submitter.url, "SELECT g FROM generate_series(1, 7) AS g")
    assert result(counted) == {"rowcount": 7}
    big = enqueue(submitter.url, "SELECT repeat('x', 600000) FROM generate_series(1, 3)", fetch=10)
    out = result(big)  # llm_sql_task_max_bytes (1 MiB) holds one such row
    assert len(out["rows"]) == 1 and out["rowcount"] == 3 and out["truncated"] is True


def test_messages_from_before_the_upgrade_are_not_honoured(enabled: ModuleType, clean_db: str) -> None:
    payload = Message(queue_name="tasks", actor_name="sql_task", args=("SELECT 1",), kwargs={}, options={}).encode()
    with psycopg.connect(clean_db, autocommit=True) as conn:  # a row as written before schema 012: no enqueuer
        conn.execute("SET session_replication_role = replica")  # (superuser only) no triggers
        conn.execute("INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload) "
                     "VALUES ('old-one', 'tasks', 'sql_task', %s)", (payload,))
    assert "no recorded enqueuer" in dead_letter(clean_db, "old-one")
