"""Fault tests: real worker processes against a private PostgreSQL that each test module starts,
restarts and stops itself (never the machine's shared server, never the suite's own database).

Fixtures:
- `pg`: the module's PrivateCluster (neuron_tasks.testing.cluster).
- `fdb`: a fresh database on it, migrated, with public.test_runs (key, pid, at) for actors to record in.
- `spawn_workers(url, processes=, threads=, **settings)`: a `neuron-tasks worker` supervisor running
  tests.faults.fault_actors, in its own process group (SIGKILLed at teardown, its log printed).
Helpers: `wait_for`, `enqueue` (SQL enqueue), `runs(conn, key_prefix)`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from neuron_tasks.core import migrate
from neuron_tasks.testing.cluster import PrivateCluster

ROOT = Path(__file__).resolve().parents[2]
ACTORS = "tests.faults.fault_actors"
QUEUE = "faults"
T = TypeVar("T")

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivateCluster]:
    with PrivateCluster() as cluster:
        yield cluster


@pytest.fixture
def fdb(pg: PrivateCluster) -> Iterator[str]:
    """A migrated database of this test's own on the private cluster."""
    if not pg.running():
        pg.start()
    name = f"nt_fault_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(pg.url, dbname=name)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.test_runs (key text NOT NULL, pid int,"
                     " at timestamptz DEFAULT clock_timestamp())")
    yield url
    if not pg.running():
        pg.start()
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Workers:
    """A running `neuron-tasks worker` supervisor (its own process group) and its log."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def worker_env(url: str, **settings: str) -> dict[str, str]:
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    env.update({f"NEURON_TASKS_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture
def spawn_workers(tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    started: list[Workers] = []

    def start(url: str, *, processes: int = 1, threads: int = 2, module: str = ACTORS,
              **settings: str) -> Workers:
        log = tmp_path / f"workers-{len(started)}.log"
        cmd = [sys.executable, "-m", "neuron_tasks.cli", "worker", module, "-p", str(processes),
               "-t", str(threads), "--metrics-port", "0"]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(url, **settings), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        workers = Workers(proc, log)
        started.append(workers)
        return workers

    yield start
    for workers in started:
        try:
            os.killpg(workers.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            workers.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        print(f"--- worker log {workers.log.name} (exit {workers.proc.returncode}) ---\n{workers.log_text()[-6000:]}")


def wait_for(check: Callable[[], T | None], what: str, *, timeout: float = 60.0) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except psycopg.OperationalError:
            value = None  # the server is down or restarting: keep asking
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def enqueue(url: str, actor: str, args: list[Any] | None = None, *, queue: str = QUEUE,
            options: dict[str, Any] | None = None) -> str:
    """Enqueue through SQL, as an application could; returns the message id."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT neuron_tasks.enqueue(%s, %s, %s, '{}'::jsonb, %s)",
                           (queue, actor, Jsonb(args or []), Jsonb(options or {}))).fetchone()
    assert row is not None
    return str(row[0])


def runs(url: str, prefix: str = "") -> list[str]:
    """Keys recorded in public.test_runs, oldest first."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT key FROM public.test_runs WHERE key LIKE %s ORDER BY at",
                                           (prefix + "%",)).fetchall()]
