"""Only `neuron-tasks db upgrade` changes the schema: every other command, on a database whose
schema is missing or older than the code, says so in one line naming `neuron-tasks db upgrade`
and creates nothing; a worker refuses to start. With no database URL set, every command says on
stderr that it uses the embedded PostgreSQL and where its data lives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from neuron_tasks.core import migrate
from neuron_tasks.sql import q
from tests.conftest import ROOT


def run(url: str | None, *args: str, env: dict[str, str] | None = None,
        module: str = "neuron_tasks.cli") -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "NEURON_TASKS_DATABASE_URL"}
    if url is not None:
        environ["NEURON_TASKS_DATABASE_URL"] = url
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=environ,
                          cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)


def has_schema(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regnamespace('neuron_tasks') IS NOT NULL").fetchone()
    return bool(row and row[0])


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    name = f"nt_test_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(server_url, dbname=name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def one_line_naming_upgrade(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "`neuron-tasks db upgrade`" in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_commands_on_an_empty_database_name_db_upgrade_and_create_nothing(empty_db: str) -> None:
    for args in (("status",), ("status", "--json"), ("dead-letters", "list"), ("tenants", "list"),
                 ("enqueue", "some_actor"), ("messages", "cancel", "x"), ("queues", "purge", "q", "--yes"),
                 ("worker", "--metrics-port", "0")):
        one_line_naming_upgrade(run(empty_db, *args), "no neuron_tasks schema yet")
    assert not has_schema(empty_db)
    status = run(empty_db, "db", "status")  # says what is pending, changes nothing
    assert status.returncode == 0 and "001_messages" in status.stdout and not has_schema(empty_db)
    assert run(empty_db, "db", "upgrade").returncode == 0
    assert run(empty_db, "status").returncode == 0


def test_an_older_schema_is_refused_and_the_worker_does_not_start(empty_db: str) -> None:
    *older, last = migrate.load_migrations()
    with psycopg.connect(empty_db) as conn, conn.transaction():  # a database upgraded by an older version
        conn.execute(q("create_schema"))
        conn.execute(q("create_migrations_table"))
        for m in older:
            conn.execute(m.sql.encode())
            conn.execute(q("record_migration"), {"version": m.version, "name": m.name, "checksum": m.checksum})
    name = f"{last.version:03d}_{last.name}"
    one_line_naming_upgrade(run(empty_db, "status"), "older than this neuron_tasks", name)
    one_line_naming_upgrade(run(empty_db, "worker", "--metrics-port", "0"), name)
    # Dramatiq's own CLI boots through neuron_tasks.worker.boot: it refuses too
    boot = subprocess.run([sys.executable, "-c", "import neuron_tasks.worker.boot"], capture_output=True, text=True,
                       env={**os.environ, "NEURON_TASKS_DATABASE_URL": empty_db}, cwd=ROOT, timeout=60)
    assert boot.returncode != 0 and "MigrationError" in boot.stderr and "neuron-tasks db upgrade" in boot.stderr
    with psycopg.connect(empty_db, autocommit=True) as conn:
        [(count,)] = conn.execute("SELECT count(*) FROM neuron_tasks.schema_migrations").fetchall()
    assert count == len(migrate.load_migrations()) - 1  # nothing but `db upgrade` applies it
    upgraded = run(empty_db, "db", "upgrade")
    assert upgraded.returncode == 0 and name in upgraded.stdout


def test_without_a_database_url_the_embedded_server_is_announced_on_stderr() -> None:
    data = Path(tempfile.mkdtemp(prefix="neuron-tasks-test-", dir="/var/tmp"))
    os.chmod(data, 0o755)
    try:
        # a misspelled variable is not read: the notice shows which database is used instead
        proc = run(None, "db", "status", "--json", env={"NEURON_TASKS_EMBEDDED_DIR": str(data / "pgdata"),
                                                        "NEURON_TASK_DATABASE_URL": "postgresql://typo@nowhere/x"})
        assert proc.returncode == 0, proc.stderr
        assert (f"note: NEURON_TASKS_DATABASE_URL is not set: using the embedded PostgreSQL, its data in "
                f"{data / 'pgdata'}") in proc.stderr
        assert '"pending"' in proc.stdout  # stdout stays clean JSON
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_with_a_database_url_there_is_no_notice(clean_db: str) -> None:
    proc = run(clean_db, "status", "--json")
    assert proc.returncode == 0 and "embedded PostgreSQL" not in proc.stderr, proc.stderr
