"""Least privilege on a real PostgreSQL with real LOGIN roles: the group roles that `db upgrade`
ships (schema/012), a producer that can only enqueue, a worker role that runs a real worker,
who enqueued each message (a column a raw INSERT cannot forge), SECURITY DEFINER functions
with a pinned search_path and no EXECUTE for PUBLIC."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dramatiq
import psycopg
import pytest
from dramatiq.message import Message
from psycopg import sql
from psycopg.conninfo import make_conninfo

from neuron_tasks import PostgresBroker, Settings
from neuron_tasks.core import migrate

GROUPS = ("neuron_tasks_producer", "neuron_tasks_worker", "neuron_tasks_admin", "neuron_tasks_sql_submitter",
          "neuron_tasks_sql_runner")


@dataclass(frozen=True)
class Role:
    name: str
    url: str


@contextmanager
def login_role(url: str, *groups: str) -> Iterator[Role]:
    """A LOGIN role of a unique name, member of `groups`; dropped afterwards (roles are
    cluster-wide: its sessions are ended and what it owns in this database is dropped first)."""
    name = f"nt_test_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for group in groups:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))
        yield Role(name, make_conninfo(url, user=name, password=password))
    finally:
        drop_role(url, name)


def drop_role(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        for _ in range(50):  # its terminated sessions may take a moment to go
            try:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
                return
            except psycopg.errors.DependentObjectsStillReferenced:
                raise
            except psycopg.Error:
                time.sleep(0.1)
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def wait_for(check, timeout: float = 15.0, every: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def scalar(url: str, query: str, *params: object) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


# -- the group roles ------------------------------------------------------------------------------
def test_upgrade_ships_the_group_roles_nologin_and_unprivileged(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
            "WHERE rolname = ANY(%s) ORDER BY rolname", (list(GROUPS),)).fetchall()
    assert sorted(r[0] for r in rows) == sorted(GROUPS)
    assert all(not any(r[1:]) for r in rows), rows


def test_a_second_database_upgrades_with_the_roles_already_there(server_url: str, clean_db: str) -> None:
    name = f"nt_test_lp_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = make_conninfo(server_url, dbname=name)
        applied = migrate.upgrade(url)
        assert applied and applied[-1].version >= 12
        assert scalar(url, "SELECT has_function_privilege('neuron_tasks_producer', "
                           "'neuron_tasks.enqueue(text, text, jsonb, jsonb, jsonb)', 'EXECUTE')") is True
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_security_definer_functions_pin_search_path_and_are_not_public(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text, p.proconfig, "
            "       EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
            "               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public_execute "
            "FROM pg_proc p WHERE p.pronamespace = 'neuron_tasks'::regnamespace AND p.prosecdef").fetchall()
    names = {r[0].split("(")[0] for r in rows}
    assert {"neuron_tasks.enqueue", "neuron_tasks.sql_task_run_v1"} <= names
    for proc, config, public_execute in rows:
        paths = [c for c in (config or []) if c.startswith("search_path=")]
        assert paths and paths[0].startswith("search_path=pg_catalog,"), (proc, config)
        assert not public_execute, f"{proc} is executable by PUBLIC"


# -- a producer -----------------------------------------------------------------------------------
def test_a_producer_enqueues_but_cannot_read_or_write_the_tables(clean_db: str) -> None:
    with login_role(clean_db, "neuron_tasks_producer") as producer, \
            psycopg.connect(producer.url, autocommit=True) as conn:
        message_id = conn.execute(
            "SELECT neuron_tasks.enqueue('lp', 'lp_job', '[1]'::jsonb)").fetchone()[0]  # type: ignore[index]
        for statement in ("SELECT * FROM neuron_tasks.messages",
                          "SELECT payload FROM neuron_tasks.messages LIMIT 1",
                          "SELECT * FROM neuron_tasks.results",
                          "UPDATE neuron_tasks.messages SET state = 'failed'",
                          "DELETE FROM neuron_tasks.messages",
                          "INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload) "
                          "VALUES ('x', 'lp', 'lp_job', '\\x00')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert scalar(clean_db, "SELECT enqueued_by FROM neuron_tasks.messages WHERE message_id = %s",
                      message_id) == producer.name


def test_a_role_without_grants_cannot_enqueue(clean_db: str) -> None:
    with login_role(clean_db) as nobody, psycopg.connect(nobody.url, autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT neuron_tasks.enqueue('lp', 'lp_job', '[1]'::jsonb)")


def test_enqueued_by_cannot_be_forged_on_insert_nor_changed_later(clean_db: str) -> None:
    with login_role(clean_db, "neuron_tasks_worker") as worker, psycopg.connect(worker.url, autocommit=True) as conn:
        payload = Message(queue_name="lp", actor_name="lp_job", args=(), kwargs={}, options={}).encode()
        row_id = conn.execute(
            "INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload, enqueued_by) "
            "VALUES ('forged', 'lp', 'lp_job', %s, 'postgres') RETURNING id", (payload,)).fetchone()[0]  # type: ignore[index]
        assert scalar(clean_db, "SELECT enqueued_by FROM neuron_tasks.messages WHERE id = %s", row_id) == worker.name
        conn.execute("UPDATE neuron_tasks.messages SET enqueued_by = 'postgres' WHERE id = %s", (row_id,))
        assert scalar(clean_db, "SELECT enqueued_by FROM neuron_tasks.messages WHERE id = %s", row_id) == worker.name


# -- a worker -------------------------------------------------------------------------------------
def test_a_worker_role_runs_a_real_worker_through_a_job_to_finished(clean_db: str) -> None:
    with login_role(clean_db, "neuron_tasks_worker") as worker_role, \
            login_role(clean_db, "neuron_tasks_producer") as producer:
        settings = Settings(database_url=worker_role.url, lease_s=2.0, min_backoff_ms=10, max_backoff_ms=50,
                            naptime_ms=200)
        broker = PostgresBroker(settings=settings)
        dramatiq.set_broker(broker)
        ran = threading.Event()
        seen: list[int] = []

        @dramatiq.actor(broker=broker, actor_name="lp_job", queue_name="lp")
        def lp_job(x: int) -> None:
            seen.append(x)
            ran.set()

        broker.emit_after("process_boot")
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
        worker.start()
        try:
            with psycopg.connect(producer.url, autocommit=True) as conn:
                message_id = conn.execute(
                    "SELECT neuron_tasks.enqueue('lp', 'lp_job', '[7]'::jsonb)").fetchone()[0]  # type: ignore[index]
            assert ran.wait(15), "the worker role did not run the job"
            finished = wait_for(lambda: scalar(
                clean_db, "SELECT count(*) FROM neuron_tasks.messages_history WHERE message_id = %s", message_id))
            assert finished == 1 and seen == [7]
            assert scalar(clean_db, "SELECT count(*) FROM neuron_tasks.messages WHERE message_id = %s",
                          message_id) == 0
        finally:
            worker.stop(timeout=5000)
            broker.close()
        with psycopg.connect(worker_role.url, autocommit=True) as conn:  # a worker is no admin
            for statement in ("ALTER TABLE neuron_tasks.messages ADD COLUMN x int",
                              "DROP TABLE neuron_tasks.results",
                              "INSERT INTO neuron_tasks.settings (key, value) VALUES ('batch_size', '1')",
                              "CREATE TRIGGER t BEFORE INSERT ON neuron_tasks.messages "
                              "FOR EACH ROW EXECUTE FUNCTION neuron_tasks.notify_enqueued_v1()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)


def test_the_dashboard_runs_as_a_worker_role(clean_db: str) -> None:
    from starlette.testclient import TestClient

    from neuron_tasks.core import parts
    from neuron_tasks.dashboard.app import create_app
    from neuron_tasks.dashboard.settings import DashboardSettings
    from neuron_tasks.db import make_pool
    from tests.integration.dashboard_helpers import csrf, enqueue, kill, states

    row = enqueue(clean_db, "lp_job", [1])
    kill(clean_db, row)
    with login_role(clean_db, "neuron_tasks_worker") as role:
        pool = make_pool(role.url, max_size=2, name="neuron_tasks-dashboard-test")
        try:
            with TestClient(create_app(pool, DashboardSettings()), base_url="http://127.0.0.1:8787") as c:
                pages = ["/", "/messages", "/dead-letters", "/workers", "/metrics", "/healthz",
                         *(f"/parts/{slug}" for slug in parts.pages())]
                for page in pages:
                    r = c.get(page)
                    assert r.status_code == 200, (page, r.text[:300])
                    assert "permission denied" not in r.text, page
                assert "neuron_tasks_database_up 1.0" in c.get("/metrics").text
                token = csrf(c.get("/dead-letters").text)
                assert c.post("/dead-letters/action", data={"csrf": token, "requeue_one": str(row)}).status_code == 200
        finally:
            pool.close()
    assert states(clean_db)[row] == "pending"
