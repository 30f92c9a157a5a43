"""Behind PgBouncer in transaction mode: producers and workers reach PostgreSQL through the pooler
(NEURON_TASKS_DATABASE_URL), while the one connection per worker process that needs a session of
its own, the LISTEN connection, goes to PostgreSQL directly (NEURON_TASKS_SESSION_URL).

Every job is run and finished once; the pooler serves the workers' pools and never a LISTEN.
Skipped where pgbouncer is not installed (apt-get install pgbouncer).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from neuron_tasks import PostgresBroker
from neuron_tasks.core import migrate
from neuron_tasks.testing.cluster import PrivateCluster, free_port
from tests.faults.conftest import QUEUE, Workers, enqueue, wait_for

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180),
              pytest.mark.skipif(PGBOUNCER is None, reason="needs pgbouncer (apt-get install pgbouncer)")]

JOBS = 120


class Bouncer:
    """A PgBouncer of the test's own, in transaction mode, in front of `pg`."""

    def __init__(self, pg: PrivateCluster) -> None:
        assert PGBOUNCER is not None
        self.root = Path(tempfile.mkdtemp(prefix="neuron-tasks-pgbouncer-", dir="/var/tmp"))
        self.port = free_port()
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={pg.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.root}/userlist.txt\nadmin_users = postgres\n"
            "pool_mode = transaction\ndefault_pool_size = 10\nmax_client_conn = 500\n"
            # libpq's `options` (our per-session settings) is not a parameter PgBouncer can pass on
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.root}/pgbouncer.log\n")
        user = pg.user
        if user is not None:  # PgBouncer refuses to run as root
            for path in (self.root, *self.root.iterdir()):
                shutil.chown(path, user)
        self.proc = subprocess.Popen([PGBOUNCER, str(self.root / "pgbouncer.ini")], user=user,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: self._answers(), "pgbouncer to accept connections", timeout=30)

    def _answers(self) -> bool:
        try:
            self.show("VERSION")
            return True
        except psycopg.OperationalError:
            if self.proc.poll() is not None:
                pytest.fail(f"pgbouncer exited: {self.log()}")
            return False

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def show(self, what: str) -> list[dict[str, object]]:
        """The admin console's SHOW `what` (simple query protocol)."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True, connect_timeout=2) as conn:
            cur = psycopg.ClientCursor(conn)
            cur.execute(f"SHOW {what}")
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def log(self) -> str:
        try:
            return (self.root / "pgbouncer.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def stack() -> Iterator[tuple[PrivateCluster, Bouncer, str]]:
    with PrivateCluster() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE nt_bouncer")
        direct = make_conninfo(pg.url, dbname="nt_bouncer")
        migrate.upgrade(direct)  # migrations take a transaction-level lock: fine through the pooler too
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.test_runs (key text NOT NULL, pid int,"
                         " at timestamptz DEFAULT clock_timestamp())")
        bouncer = Bouncer(pg)
        try:
            yield pg, bouncer, direct
        finally:
            bouncer.close()


def test_workers_and_producers_behind_pgbouncer_in_transaction_mode(
    stack: tuple[PrivateCluster, Bouncer, str], spawn_workers: Callable[..., Workers],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pg, bouncer, direct = stack
    pooled = bouncer.url("nt_bouncer")
    monkeypatch.setenv("NEURON_TASKS_SESSION_URL", direct)  # this process's producer, as the workers'
    workers = spawn_workers(pooled, processes=2, threads=2, session_url=direct)
    broker = PostgresBroker(pooled)
    try:
        sent = [broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="record", args=(f"py{i}",),
                                                kwargs={}, options={})).message_id for i in range(JOBS)]
        sent += [enqueue(pooled, "record", [f"sql{i}"]) for i in range(JOBS // 4)]
        with psycopg.connect(direct, autocommit=True) as conn:
            def finished() -> bool:
                row = conn.execute("SELECT count(DISTINCT message_id) FROM neuron_tasks.messages_history "
                                   "WHERE message_id = ANY(%s)", (sent,)).fetchone()
                return row is not None and row[0] == len(sent)

            wait_for(finished, "every job to finish", timeout=90)
            runs = conn.execute("SELECT key, count(*) FROM public.test_runs GROUP BY 1").fetchall()

            def direct_listeners() -> bool:  # one per worker process, once both have started
                row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                   "WHERE application_name = 'neuron_tasks-listener'").fetchone()
                return row is not None and row[0] == 2

            wait_for(direct_listeners, "a direct LISTEN connection per worker process", timeout=60)
        assert len(runs) == len(sent) and all(n == 1 for _, n in runs), workers.log_text()[-4000:]
        clients = bouncer.show("CLIENTS")  # after both processes started: none of them LISTENs here
        names = {str(c.get("application_name")) for c in clients}
        assert "neuron_tasks" in names, clients  # the workers' pools go through the pooler
        assert "neuron_tasks-listener" not in names, clients  # LISTEN never does
        assert "ERROR" not in workers.log_text(), workers.log_text()[-4000:]
    finally:
        broker.close()
