"""Failover: a primary and a synchronous streaming standby (two PostgreSQL clusters the test
makes itself), workers and a producer given both in one URL (libpq's host list with
target_session_attrs=read-write). Mid-drain the primary is stopped hard and the standby promoted:

- 0 acknowledged enqueues lost: every send() that returned is finished on the new primary;
- 0 finished jobs lost: every job finished before the primary went is in the new primary's history;
- no job that had finished runs again;
- workers finish jobs again within 10 s of the promotion, with no restart and no new URL.

Skipped where PostgreSQL's server binaries (initdb, pg_basebackup) are not installed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from neuron_tasks.config import Settings
from neuron_tasks.core import maintenance, migrate
from neuron_tasks.testing.replication import ReplicatedPair, server_bin_dir
from tests.faults.conftest import QUEUE, Workers, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(server_bin_dir() is None,
                       reason="needs PostgreSQL server binaries (initdb, pg_basebackup): "
                              "apt-get install postgresql-15"),
]

PREFILL = 240
JOB_S = 0.05
#: The job's own writes fail while the primary is away: it is retried, as an application's would be.
OPTIONS = {"max_retries": 20, "min_backoff": 100, "max_backoff": 1000}
RESUME_WITHIN_S = 10.0


@pytest.fixture
def pair() -> Iterator[ReplicatedPair]:
    with ReplicatedPair(synchronous=True) as made:
        yield made


def setup_database(pair: ReplicatedPair) -> str:
    with psycopg.connect(pair.primary.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE nt_failover")
    url = pair.url("nt_failover")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.test_runs (key text NOT NULL, pid int,"
                     " at timestamptz DEFAULT clock_timestamp())")
    return url


class Producer(threading.Thread):
    """send()s sleepy jobs through a PostgresBroker on the multi-host URL until stopped; keeps the
    message ids of the sends that returned (acknowledged) and counts those that raised."""

    def __init__(self, broker: PostgresBroker, every_s: float) -> None:
        super().__init__(name="producer", daemon=True)
        self.broker = broker
        self.every_s = every_s
        self.acked: dict[str, str] = {}  # message id -> key
        self.failed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            key = f"live{n}"
            message = dramatiq.Message(queue_name=QUEUE, actor_name="sleepy", args=(key, JOB_S),
                                       kwargs={}, options=dict(OPTIONS))
            n += 1
            try:
                self.acked[self.broker.enqueue(message).message_id] = key
            except Exception:  # not acknowledged: it may or may not exist, no claim is made for it
                self.failed += 1
            self.halt.wait(self.every_s)


def finished_snapshot(url: str) -> tuple[set[str], dict[str, int]]:
    """The message ids finished so far and the runs of each key, read in one snapshot."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        done = {r[0] for r in conn.execute("SELECT message_id FROM neuron_tasks.messages_history")}
        counts = dict(conn.execute("SELECT substr(key, 7), count(*)::int FROM public.test_runs "
                                   "WHERE key LIKE 'start:%' GROUP BY 1").fetchall())
    return done, counts


def after_promotion(url: str) -> str:
    """The new primary's clock, as text: jobs finished after it were finished by resumed workers."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT clock_timestamp()::text").fetchone()
    assert row is not None
    return str(row[0])


def finished_since(url: str, since: str) -> bool:
    with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM neuron_tasks.messages_history "
                           "WHERE finished_at > %s::timestamptz)", (since,)).fetchone()
    return bool(row and row[0])


def count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def test_failover_to_a_promoted_standby_loses_nothing(pair: ReplicatedPair,
                                                      spawn_workers: Callable[..., Workers]) -> None:
    url = setup_database(pair)
    broker = PostgresBroker(url, settings=Settings(enqueue_timeout_s=30))
    key_of: dict[str, str] = {}
    prefill = [dramatiq.Message(queue_name=QUEUE, actor_name="sleepy", args=(f"pre{i}", JOB_S), kwargs={},
                                options=dict(OPTIONS)) for i in range(PREFILL)]
    for message in broker.enqueue_many(prefill):
        key_of[message.message_id] = str(message.args[0])
    hosts = [spawn_workers(url, processes=1, threads=4) for _ in range(2)]  # two "hosts"
    finished_sql = "SELECT count(*) FROM neuron_tasks.messages_history"
    wait_for(lambda: count(url, finished_sql) >= PREFILL // 4, "a quarter of the jobs to finish")

    producer = Producer(broker, every_s=0.02)
    producer.start()
    time.sleep(0.5)
    done_before, runs_before = finished_snapshot(pair.primary.url("nt_failover"))
    pair.kill_primary()
    time.sleep(1.0)  # the time a failover manager takes to decide
    pair.promote()
    promoted = time.monotonic()
    since = after_promotion(url)
    resumed_s = wait_for(lambda: (time.monotonic() - promoted) if finished_since(url, since) else None,
                         "workers to finish a job on the promoted standby", timeout=60)
    time.sleep(1.0)
    producer.halt.set()
    producer.join(30)
    assert not producer.is_alive()

    key_of.update(producer.acked)
    acked = set(key_of)
    pending_sql = "SELECT count(*) FROM neuron_tasks.messages WHERE state <> 'failed'"
    wait_for(lambda: count(url, pending_sql) == 0, "the queue to drain on the new primary", timeout=120)
    done_after, runs_after = finished_snapshot(url)

    with psycopg.connect(url, autocommit=True) as conn:
        failed = {r[0] for r in conn.execute("SELECT message_id FROM neuron_tasks.messages WHERE state = 'failed'")}
    assert not failed, f"{len(failed)} jobs dead-lettered"
    lost_enqueues = acked - done_after
    lost_finished = done_before - done_after
    finished_keys_before = {key_of[i] for i in done_before if i in key_of}
    rerun = sorted(k for k in finished_keys_before if runs_after.get(k, 0) != runs_before.get(k, 0))
    log = "\n".join(w.log_text()[-3000:] for w in hosts)
    print(f"failover: {len(done_before)} finished before, {len(acked)} acknowledged enqueues "
          f"({producer.failed} sends raised), workers resumed {resumed_s:.2f}s after the promotion")
    assert not lost_enqueues, f"{len(lost_enqueues)} acknowledged enqueues lost\n{log}"
    assert not lost_finished, f"{len(lost_finished)} finished jobs lost\n{log}"
    assert not rerun, f"finished jobs ran again: {rerun[:10]}\n{log}"
    assert resumed_s <= RESUME_WITHIN_S, log
    assert len(producer.acked) > 0
    assert all(w.proc.poll() is None for w in hosts), "a worker supervisor exited\n" + log
    broker.close()


def test_a_promoted_standby_counts_as_just_started(pair: ReplicatedPair) -> None:
    """A standby has been up since long before its promotion: the server's epoch is its promotion,
    so a sweeper without a view of its own (the scheduler's) waits a lease and a heartbeat before it
    reclaims the leases that expired during the failover, as after a restart."""
    settings = Settings()  # a sweeper waits lease_s + heartbeat_s (40 s) after the epoch
    with psycopg.connect(pair.standby.url(), autocommit=True) as conn:
        standby_epoch = maintenance.server_epoch(conn).started_at
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    before_promotion = row[0]
    assert standby_epoch < before_promotion
    pair.kill_primary()
    pair.promote()
    with psycopg.connect(pair.standby.url(), autocommit=True) as conn:
        epoch = maintenance.server_epoch(conn)
        reason = maintenance.too_soon_to_sweep(conn, settings)
    assert epoch.started_at > before_promotion, (standby_epoch, before_promotion, epoch)
    assert epoch.up_s < maintenance.sweep_after_s(settings)
    assert reason is not None and "promoted" in reason, reason


def test_reads_that_tolerate_lag_go_to_the_replica(pair: ReplicatedPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """NEURON_TASKS_READ_URL: the dashboard's pages and /metrics, `status` and vector searches read
    the standby; the dashboard's actions still write on the primary; a write sent to the read pool fails."""
    from starlette.testclient import TestClient

    from neuron_tasks import db
    from neuron_tasks.core.admin import Repo
    from neuron_tasks.dashboard.app import create_app
    from neuron_tasks.dashboard.settings import DashboardSettings

    url = setup_database(pair)
    replica = pair.standby.url("nt_failover")
    monkeypatch.setenv("NEURON_TASKS_READ_URL", replica)
    broker = PostgresBroker(url)
    broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="sleepy", args=("r", 0.0), kwargs={}, options={}))
    broker.close()
    pair.wait_replayed()  # the replica lags: a read there sees what was replayed, no more
    primary = db.make_pool(url, max_size=2, name="nt-test-primary")
    reads = db.make_read_pool(Settings(), primary, name="nt-test")
    try:
        assert reads is not primary
        assert any(q.get("queue") == QUEUE and q["pending"] == 1 for q in Repo(reads).queue_status())
        with reads.connection() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE public.nope (x int)")
        with TestClient(create_app(primary, DashboardSettings(), read_pool=reads), base_url="http://127.0.0.1") as c:
            assert c.get("/").status_code == 200
            assert c.get("/metrics").status_code == 200
        with psycopg.connect(replica, autocommit=True) as conn:
            names = {r[0] for r in conn.execute("SELECT application_name FROM pg_stat_activity")}
        assert "nt-test-read" in names  # the pages and the scrape were served by the replica
    finally:
        reads.close()
        primary.close()
