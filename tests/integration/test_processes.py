"""Real worker processes (`neuron-tasks worker`, its supervisor and children) on a real PostgreSQL:
no message lost or run twice, SIGKILL mid-job, poison messages, killed connections, SIGTERM drain.

Actors live in tests/integration/mp_actors.py; the tests enqueue them by name and watch the
database (public.test_runs, neuron_tasks.*) with deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from tests.conftest import ROOT, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

T = TypeVar("T")
MODULE = "tests.integration.mp_actors"  # not imported here: its actors would bind to whatever broker is global
QUEUE = "mp"  # mp_actors.QUEUE
DEADLINE_S = 60.0


# -- helpers ------------------------------------------------------------------------------
@dataclass
class Workers:
    """A running `neuron-tasks worker` supervisor (its own process group) and its log."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


WorkerFactory = Callable[..., Workers]


@pytest.fixture
def spawn_workers(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start supervisors; every one of them and their children are SIGKILLed at teardown."""
    started: list[Workers] = []

    def start(url: str, *, processes: int, threads: int, **settings: str) -> Workers:
        log = tmp_path / f"workers-{len(started)}.log"
        cmd = [sys.executable, "-m", "neuron_tasks.cli", "worker", MODULE, "-p", str(processes), "-t", str(threads)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=worker_env(url, **settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: children included in the kill below
            )
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
        print(f"--- worker log {workers.log.name} (exit {workers.proc.returncode}) ---\n{workers.log_tail()}")


@pytest.fixture
def db(clean_db: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection of the test's own (not named neuron_tasks*: never terminated)."""
    with psycopg.connect(clean_db, autocommit=True, application_name="pytest") as conn:
        yield conn


def fetch(conn: psycopg.Connection[tuple[Any, ...]], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params or None).fetchall()


def scalar(conn: psycopg.Connection[tuple[Any, ...]], query: str, *params: Any) -> Any:
    rows = fetch(conn, query, *params)
    return rows[0][0] if rows else None


def wait_for(
    check: Callable[[], T | None], what: str, *, timeout: float = DEADLINE_S, workers: Workers | None = None
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if workers is not None and workers.proc.poll() is not None:
            pytest.fail(f"worker supervisor exited ({workers.proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def live_workers(conn: psycopg.Connection[tuple[Any, ...]]) -> set[int]:
    return {r[0] for r in fetch(conn, "SELECT pid FROM neuron_tasks.workers WHERE stopped_at IS NULL")}


def all_worker_pids(conn: psycopg.Connection[tuple[Any, ...]]) -> set[int]:
    return {r[0] for r in fetch(conn, "SELECT pid FROM neuron_tasks.workers")}


def wait_for_workers(conn: psycopg.Connection[tuple[Any, ...]], n: int, workers: Workers) -> set[int]:
    """Wait until `n` worker processes registered (their consumers are running)."""
    return wait_for(lambda: (pids if len(pids := live_workers(conn)) >= n else None),
                    f"{n} worker processes to register", workers=workers)


def message(actor: str, *args: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=QUEUE, actor_name=actor, args=args, kwargs={}, options={})


def count_runs(conn: psycopg.Connection[tuple[Any, ...]], key: str) -> int:
    return int(scalar(conn, "SELECT count(*) FROM public.test_runs WHERE key = %s", key))


# -- tests --------------------------------------------------------------------------------
def test_no_message_lost_or_run_twice(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], spawn_workers: WorkerFactory
) -> None:
    n = 2000
    workers = spawn_workers(broker.url, processes=2, threads=4, lease_s="10")
    pids = wait_for_workers(db, 2, workers)

    broker.enqueue_many([message("record", f"k{i}") for i in range(n)])
    wait_for(lambda: scalar(db, "SELECT count(*) FROM neuron_tasks.messages_history") >= n,
             f"{n} finished messages", workers=workers)

    total, distinct = fetch(db, "SELECT count(*), count(DISTINCT key) FROM public.test_runs")[0]
    assert (total, distinct) == (n, n), "every message ran exactly once"
    assert scalar(db, "SELECT count(*) FROM neuron_tasks.messages_history") == n
    assert scalar(db, "SELECT count(DISTINCT message_id) FROM neuron_tasks.messages_history") == n
    assert scalar(db, "SELECT count(*) FROM neuron_tasks.messages") == 0
    assert scalar(db, "SELECT max(attempts) FROM neuron_tasks.messages_history") == 1
    by_pid = dict(fetch(db, "SELECT pid, count(*) FROM public.test_runs GROUP BY pid"))
    assert set(by_pid) == pids, f"both worker processes did work: {by_pid}"


def test_sigkill_mid_job_reruns_after_lease_expiry(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], spawn_workers: WorkerFactory
) -> None:
    workers = spawn_workers(broker.url, processes=2, threads=2, lease_s="1")
    first_pids = wait_for_workers(db, 2, workers)
    sent = broker.enqueue(message("slow", "job", 3.0))

    victim = wait_for(lambda: scalar(db, "SELECT pid FROM public.test_runs WHERE key = 'start:job'"),
                      "the job to start", workers=workers)
    assert victim in first_pids and victim != workers.pid, "the job runs in a child, not in the supervisor"
    os.kill(victim, signal.SIGKILL)

    # The lease expires (no more heartbeats), the sweeper returns the message, it runs again.
    wait_for(lambda: count_runs(db, "start:job") >= 2, "the job to be run again", workers=workers)
    row = fetch(db, "SELECT state, deaths, attempts FROM neuron_tasks.messages WHERE message_id = %s",
                sent.message_id)
    if row:  # still running its 3 s second run: the sweeper counted one death
        assert row[0] == ("running", 1, 2)
    wait_for(lambda: count_runs(db, "done:job") >= 1, "the re-run to finish", workers=workers)
    wait_for(lambda: scalar(db, "SELECT count(*) FROM neuron_tasks.messages_history") == 1,
             "the message to be acked", workers=workers)

    assert count_runs(db, "start:job") == 2
    assert count_runs(db, "done:job") == 1
    rerun_pid = scalar(db, "SELECT pid FROM public.test_runs WHERE key = 'done:job'")
    assert rerun_pid != victim
    assert fetch(db, "SELECT attempts, retries FROM neuron_tasks.messages_history WHERE message_id = %s",
                 sent.message_id) == [(2, 0)]
    assert scalar(db, "SELECT count(*) FROM neuron_tasks.messages") == 0

    # The supervisor replaced the killed child: a new pid registered.
    new = wait_for(lambda: live_workers(db) - first_pids, "a restarted worker process", workers=workers)
    assert victim not in new


def test_poison_message_is_dead_lettered_and_workers_survive(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], spawn_workers: WorkerFactory
) -> None:
    workers = spawn_workers(broker.url, processes=2, threads=2, lease_s="1", max_retries="1")
    first_pids = wait_for_workers(db, 2, workers)
    poison = broker.enqueue(message("suicide", "poison"))

    def dead_lettered() -> tuple[Any, ...] | None:
        rows = fetch(db, "SELECT state, deaths, last_error FROM neuron_tasks.messages WHERE message_id = %s",
                     poison.message_id)
        assert rows, "the poison message is still in the table"
        return rows[0] if rows[0][0] == "failed" else None

    _state, deaths, last_error = wait_for(dead_lettered, "the poison message to be dead-lettered", workers=workers)
    assert last_error.startswith("PoisonMessage"), last_error
    assert deaths == 2, "max_retries=1: dead-lettered when its worker died a second time"
    assert count_runs(db, "poison") == 2, "not run again once dead-lettered"
    killed = {r[0] for r in fetch(db, "SELECT pid FROM public.test_runs WHERE key = 'poison'")}
    assert len(killed) == 2 and killed <= all_worker_pids(db), "two worker children died running it"
    assert first_pids & killed, "one of the first children was killed"

    after = broker.enqueue(message("record", "after-poison"))
    wait_for(lambda: count_runs(db, "after-poison") == 1, "a normal message to run after the poison",
             workers=workers)
    wait_for(lambda: scalar(db, "SELECT count(*) FROM neuron_tasks.messages_history WHERE message_id = %s",
                            after.message_id) == 1, "the normal message to be acked", workers=workers)
    assert workers.proc.poll() is None, "the supervisor keeps running"
    assert count_runs(db, "poison") == 2
    assert fetch(db, "SELECT state FROM neuron_tasks.messages") == [("failed",)]


TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'neuron_tasks%'
"""


def test_killed_postgres_connections_lose_nothing(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], spawn_workers: WorkerFactory
) -> None:
    n = 300
    workers = spawn_workers(broker.url, processes=2, threads=2, lease_s="2")
    wait_for_workers(db, 2, workers)
    broker.enqueue_many([message("nap", f"n{i}", 10) for i in range(n)])

    wait_for(lambda: scalar(db, "SELECT count(*) FROM public.test_runs") > 0, "the first runs", workers=workers)
    killed = []
    for i in range(2):
        if i:
            time.sleep(1.0)
        done = scalar(db, "SELECT count(DISTINCT key) FROM public.test_runs")
        killed.append((int(scalar(db, TERMINATE)), done))
    print(f"terminated (connections, keys done at the time): {killed}")
    assert killed[0][0] > 0, "the workers' connections were terminated"

    wait_for(lambda: scalar(db, "SELECT count(DISTINCT key) FROM public.test_runs") == n,
             f"all {n} keys to run", workers=workers)
    wait_for(lambda: scalar(db, "SELECT count(*) FROM neuron_tasks.messages") == 0,
             "no message left in the queue (pending, running, retrying or failed)", workers=workers)
    assert scalar(db, "SELECT count(DISTINCT message_id) FROM neuron_tasks.messages_history") == n
    assert scalar(db, "SELECT count(*) FROM neuron_tasks.messages_history") == n
    runs, retried, reclaimed = fetch(
        db,
        "SELECT (SELECT count(*) FROM public.test_runs), count(*) FILTER (WHERE retries > 0),"
        " count(*) FILTER (WHERE attempts > retries + 1) FROM neuron_tasks.messages_history",
    )[0]
    print(f"{runs} runs of {n} keys; {retried} messages retried, {reclaimed} reclaimed after a lost lease")


def test_sigterm_drains_gracefully(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], spawn_workers: WorkerFactory
) -> None:
    n = 20
    workers = spawn_workers(broker.url, processes=1, threads=2, lease_s="1", shutdown_timeout_s="10")
    wait_for_workers(db, 1, workers)
    sent = broker.enqueue_many([message("slow", f"j{i}", 0.5) for i in range(n)])

    wait_for(lambda: scalar(db, "SELECT count(*) FROM public.test_runs WHERE key LIKE 'start:%'") >= 2,
             "two jobs to start", workers=workers)
    os.kill(workers.pid, signal.SIGTERM)
    try:
        code = workers.proc.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail("the supervisor did not exit within 20 s of SIGTERM")
    assert code == 0

    starts = {r[0] for r in fetch(db, "SELECT substr(key, 7) FROM public.test_runs WHERE key LIKE 'start:%'")}
    dones = {r[0] for r in fetch(db, "SELECT substr(key, 6) FROM public.test_runs WHERE key LIKE 'done:%'")}
    assert len(starts) >= 2
    assert starts == dones, "every job that started finished"
    assert scalar(db, "SELECT count(*) FROM public.test_runs WHERE key LIKE 'start:%'") == len(starts)

    finished = {r[0] for r in fetch(db, "SELECT message_id FROM neuron_tasks.messages_history")}
    states = dict(fetch(db, "SELECT message_id, state FROM neuron_tasks.messages"))
    ids = {m.message_id for m in sent}
    assert len(finished) == len(starts), "the jobs that ran were acked"
    assert not finished & set(states)
    assert finished | set(states) == ids, "no message lost"
    assert set(states.values()) <= {"pending"}, f"the rest went back to the queue: {states}"
    stopped = fetch(db, "SELECT stopped_at IS NOT NULL FROM neuron_tasks.workers")
    assert stopped == [(True,)], "the worker process marked itself stopped"


def test_poison_does_not_condemn_messages_prefetched_beside_it(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], spawn_workers: WorkerFactory
) -> None:
    # One thread: the poison message and five innocent ones are claimed in one batch; every time
    # the poison kills the process, the innocent ones are reclaimed with it without having started.
    workers = spawn_workers(broker.url, processes=1, threads=1, lease_s="1", max_retries="1")
    wait_for_workers(db, 1, workers)
    broker.enqueue_many([message("suicide", "poison")] + [message("slow", f"innocent{i}", 0.01) for i in range(5)])

    wait_for(lambda: scalar(db, "SELECT count(*) FROM neuron_tasks.messages WHERE state = 'failed'") == 1
             and scalar(db, "SELECT count(*) FROM neuron_tasks.messages_history") == 5,
             "the poison to be dead-lettered and the innocent messages to finish", workers=workers)
    [(actor, last_error)] = fetch(db, "SELECT actor_name, last_error FROM neuron_tasks.messages")
    assert actor == "suicide" and last_error.startswith("PoisonMessage")
    assert count_runs(db, "poison") == 2
    assert {r[0] for r in fetch(db, "SELECT actor_name FROM neuron_tasks.messages_history")} == {"slow"}


def test_ctrl_c_to_the_process_group_drains_gracefully(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], spawn_workers: WorkerFactory
) -> None:
    # A terminal's Ctrl-C sends SIGINT to the supervisor and its children at once.
    workers = spawn_workers(broker.url, processes=1, threads=2, lease_s="30", shutdown_timeout_s="10")
    wait_for_workers(db, 1, workers)
    broker.enqueue_many([message("slow", f"c{i}", 1.0) for i in range(4)])
    wait_for(lambda: scalar(db, "SELECT count(*) FROM public.test_runs WHERE key LIKE 'start:%'") >= 2,
             "two jobs to start", workers=workers)
    os.killpg(workers.pid, signal.SIGINT)
    assert workers.proc.wait(20) == 0
    starts = scalar(db, "SELECT count(*) FROM public.test_runs WHERE key LIKE 'start:%'")
    dones = scalar(db, "SELECT count(*) FROM public.test_runs WHERE key LIKE 'done:%'")
    assert starts == dones, "the running jobs finished instead of being killed"
    assert scalar(db, "SELECT count(*) FROM neuron_tasks.messages WHERE state = 'running'") == 0
    assert fetch(db, "SELECT stopped_at IS NOT NULL FROM neuron_tasks.workers") == [(True,)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_metrics_endpoint_counts_messages(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], tmp_path: Path
) -> None:
    import urllib.request

    port = free_port()
    log = tmp_path / "metrics-workers.log"
    cmd = [sys.executable, "-m", "neuron_tasks.cli", "worker", MODULE, "-p", "2", "-t", "2",
           "--metrics-port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(broker.url), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: len(live_workers(db)) >= 2, "2 worker processes")
        broker.enqueue_many([message("record", f"m{i}") for i in range(7)] + [message("explode", "x")])
        wait_for(lambda: scalar(db, "SELECT count(*) FROM neuron_tasks.messages_history") == 7
                 and scalar(db, "SELECT count(*) FROM neuron_tasks.messages WHERE state = 'failed'") == 1,
                 "7 finished and 1 dead letter")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        text = wait_for(lambda: (t if 'neuron_tasks_messages_dead_lettered_total{actor_name="explode"' in
                                 (t := scrape()) else None), "the dead letter to be counted")
        lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                 if line and not line.startswith("#")}
        assert lines['neuron_tasks_messages_total{actor_name="record",queue_name="mp"}'] == 7
        assert lines['neuron_tasks_message_errors_total{actor_name="explode",queue_name="mp"}'] == 1
        assert lines['neuron_tasks_message_duration_seconds_count{actor_name="record",queue_name="mp"}'] == 7
        assert lines['neuron_tasks_queue_depth{queue_name="mp",state="failed"}'] == 1
        assert lines['neuron_tasks_workers{status="running"}'] >= 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_tenant_qps_and_topic_concurrency_hold_across_processes(
    broker: PostgresBroker, db: psycopg.Connection[tuple[Any, ...]], spawn_workers: WorkerFactory
) -> None:
    from neuron_tasks.core.tenancy import set_tenant
    from neuron_tasks.core.topics import set_topic

    set_tenant(broker.pool, "slow", qps=5, burst=5)
    set_topic(broker.pool, "heavy", concurrency=2)
    workers = spawn_workers(broker.url, processes=2, threads=4, lease_s="10")
    wait_for_workers(db, 2, workers)

    def msg(actor: str, *args: Any, **options: Any) -> dramatiq.Message[Any]:
        return dramatiq.Message(queue_name=QUEUE, actor_name=actor, args=args, kwargs={}, options=options)

    began = scalar(db, "SELECT clock_timestamp()")
    broker.enqueue_many([msg("record", f"slow{i}", tenant="slow") for i in range(25)]
                        + [msg("record", f"fast{i}", tenant="fast") for i in range(300)]
                        + [msg("slow", f"heavy{i}", 0.3, topic="heavy") for i in range(10)])
    wait_for(lambda: scalar(db, "SELECT count(*) FROM neuron_tasks.messages_history") == 335,
             "every message to finish", workers=workers)

    def seconds(prefix: str) -> list[float]:
        return [float(r[0]) for r in fetch(
            db, "SELECT extract(epoch FROM at - %s) FROM public.test_runs WHERE key LIKE %s ORDER BY at",
            began, prefix + "%")]

    slow, fast = seconds("slow"), seconds("fast")
    assert len(slow) == 25 and len(fast) == 300
    for i in range(len(slow)):  # at most 5 * t + 5 starts in any t seconds (+1 for clock granularity)
        for j in range(i, len(slow)):
            assert j - i + 1 <= 5 * (slow[j] - slow[i]) + 5 + 1
    assert max(fast) < max(slow), "the unlimited tenant is not held back by the limited one"
    spans = fetch(db, "SELECT s.at, d.at FROM public.test_runs s JOIN public.test_runs d "
                  "ON d.key = 'done:' || substr(s.key, 7) WHERE s.key LIKE 'start:heavy%%'")
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert len(spans) == 10 and 1 <= peak <= 2, f"topic concurrency 2 across 2 processes, peak {peak}"
