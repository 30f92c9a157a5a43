"""Test fixtures: a real PostgreSQL (embedded by default, or NEURON_TASKS_DATABASE_URL), a fresh
database per test session with the migrations applied, tables emptied before every test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from neuron_tasks import PostgresBroker, Settings, embedded
from neuron_tasks.core import migrate
from neuron_tasks.testing import truncate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The server the suite runs on: $NEURON_TASKS_DATABASE_URL, else an embedded one."""
    url = os.environ.get("NEURON_TASKS_DATABASE_URL")
    if url:
        yield url
        return
    data = Path(tempfile.mkdtemp(prefix="neuron-tasks-test-", dir="/var/tmp"))
    os.chmod(data, 0o755)
    yield embedded.start(data / "pgdata", delete_on_exit=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A database of our own on that server, migrated once."""
    name = f"nt_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    migrate.upgrade(url)
    previous = os.environ.get("NEURON_TASKS_DATABASE_URL")
    yield url
    if previous is not None:
        os.environ["NEURON_TASKS_DATABASE_URL"] = previous
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def clean_db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        truncate(conn, "queue")
        conn.execute("DROP TABLE IF EXISTS public.test_runs")
        conn.execute(
            "CREATE TABLE public.test_runs (key text NOT NULL, pid int, at timestamptz DEFAULT clock_timestamp())"
        )
    return database_url


@pytest.fixture
def settings(clean_db: str) -> Settings:
    return Settings(database_url=clean_db, lease_s=2.0, min_backoff_ms=10, max_backoff_ms=50, naptime_ms=200)


@pytest.fixture
def broker(settings: Settings) -> Iterator[PostgresBroker]:
    b = PostgresBroker(settings=settings)
    dramatiq.set_broker(b)
    yield b
    b.close()


@pytest.fixture
def worker(broker: PostgresBroker) -> Iterator[dramatiq.Worker]:
    broker.emit_after("process_boot")  # starts TimeLimit's monitor, as a worker process does
    w = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    w.start()
    yield w
    w.stop(timeout=5000)


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname", ""))


def worker_env(url: str, **settings: str) -> dict[str, str]:
    """Environment for a `neuron-tasks worker` subprocess running the test actor modules."""
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    env.update({f"NEURON_TASKS_{k.upper()}": v for k, v in settings.items()})
    return env
