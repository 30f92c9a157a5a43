"""The scheduler: triggers, exactly-once fires, two processes, SIGKILL failover, built-ins."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from neuron_tasks.scheduler.jobs import REGISTRY, ScheduledJob, due_times, load_config, periodic
from neuron_tasks.scheduler.node import SchedulerNode, builtin
from neuron_tasks.scheduler.settings import SchedulerSettings
from neuron_tasks.testing import truncate
from tests.conftest import ROOT

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def sdb(clean_db: str) -> str:
    truncate(clean_db, "scheduler")
    return clean_db


# -- triggers (no database) -------------------------------------------------------------------
def test_due_times_interval_catch_up_and_grace() -> None:
    trig = ScheduledJob("j", "actor", "a", every=1).trigger()
    due, nxt, skipped = due_times(trig, T0, T0 + timedelta(seconds=3.5), grace_s=60, limit=100)
    assert due == [T0 + timedelta(seconds=s) for s in (1, 2, 3)] and nxt == T0 + timedelta(seconds=4) and not skipped
    # Never fired: starts at the first tick since this node leads.
    due, _, _ = due_times(trig, None, T0 + timedelta(seconds=2.2), grace_s=60, limit=100, since=T0 + timedelta(0.5))
    assert due == []
    due, _, _ = due_times(trig, None, T0 + timedelta(seconds=2.2), grace_s=60, limit=100,
                          since=T0 + timedelta(seconds=0.5))
    assert due == [T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]
    # Older than the grace: skipped and counted.
    due, _, skipped = due_times(trig, T0, T0 + timedelta(seconds=100), grace_s=10, limit=100)
    assert due[0] == T0 + timedelta(seconds=90) and len(due) == 11 and skipped == 89
    # Interval ticks sit on the epoch grid, whatever the node's start time.
    t30 = ScheduledJob("k", "actor", "a", every=30).trigger()
    assert t30.get_next_fire_time(None, T0 + timedelta(seconds=1)) == T0 + timedelta(seconds=30)


def test_cron_periodic_and_config(tmp_path: Path) -> None:
    cron = ScheduledJob("c", "actor", "a", cron="*/15 * * * *").trigger()
    due, _, _ = due_times(cron, T0, T0 + timedelta(minutes=31), grace_s=3600, limit=10)
    assert due == [T0 + timedelta(minutes=15), T0 + timedelta(minutes=30)]
    six = ScheduledJob("s", "actor", "a", cron="*/2 * * * * *").trigger()
    assert six.get_next_fire_time(T0, T0) == T0 + timedelta(seconds=2)
    with pytest.raises(Exception, match="exactly one"):
        ScheduledJob("x", "actor", "a")
    with pytest.raises(Exception, match="at least 1 second"):
        ScheduledJob("x", "actor", "a", every=0.5)

    class FakeActor:
        actor_name, queue_name = "nightly_report", "reports"

    periodic(cron="0 3 * * *", args=[1])(FakeActor())
    assert REGISTRY.pop("nightly_report").queue == "reports"
    cfg = tmp_path / "jobs.toml"
    cfg.write_text('[[jobs]]\nactor = "tick"\nqueue = "q1"\nevery = 5\nargs = [1, 2]\n')
    (job,) = load_config(cfg)
    assert (job.name, job.queue, job.every, job.args) == ("tick", "q1", 5, [1, 2])


# -- exactly once -----------------------------------------------------------------------------
def fires(url: str, job: str = "tick") -> list[tuple[datetime, uuid.UUID, str | None, datetime]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT fire_time, node_id, message_id, fired_at FROM neuron_tasks.scheduler_fires "
                            "WHERE job = %s ORDER BY fire_time", (job,)).fetchall()


def messages(url: str, actor: str = "tick") -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT message_id FROM neuron_tasks.messages WHERE actor_name = %s",
                                           (actor,)).fetchall()]


def check_exactly_once(url: str) -> list[datetime]:
    rows = fires(url)
    times = [r[0] for r in rows]
    steps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
    assert steps <= {1.0}, f"ticks missing or doubled: {times}"
    msgs = messages(url)
    assert sorted(msgs) == sorted(r[2] for r in rows), "every tick enqueued exactly one message"
    assert len(set(msgs)) == len(msgs)
    return times


def test_concurrent_fires_are_recorded_once(sdb: str) -> None:
    job = ScheduledJob("tick", "actor", "tick", every=1, queue="sched_test", catch_up=True)
    nodes = [SchedulerNode(sdb, [job], settings=SchedulerSettings()) for _ in range(2)]
    with psycopg.connect(sdb, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, node_id) VALUES "
                     "('tick', date_trunc('second', now()) - interval '8 seconds', gen_random_uuid())")
    for n in nodes:
        n.leading.set()  # both believe they lead (a partitioned old leader): the fire key still holds
    counts: list[int] = []
    threads = [threading.Thread(target=lambda n=n: counts.append(n.fire_job("tick"))) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) in (8, 9)  # the missed ticks, each fired by exactly one node
    with psycopg.connect(sdb, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.scheduler_fires WHERE message_id IS NULL")
    check_exactly_once(sdb)


def test_builtin_sweeper_reclaims_expired_leases(sdb: str) -> None:
    with psycopg.connect(sdb, autocommit=True) as conn:
        conn.execute("SELECT neuron_tasks.enqueue('sweep_q', 'noop')")
        conn.execute("UPDATE neuron_tasks.messages SET state = 'running', lease_owner = gen_random_uuid(), "
                     "lease_expires_at = now() - interval '1 minute'")
        assert builtin(conn, "neuron_tasks.core.maintenance:sweep_tick") == "reclaimed 1"
        assert conn.execute("SELECT state, deaths FROM neuron_tasks.messages").fetchone() == ("pending", 1)
        note = builtin(conn, "neuron_tasks.scheduler.maintenance:retention")
        assert note.startswith("messages_history=") and "tenant_usage=" in note and "llm_usage=" in note


# -- processes ----------------------------------------------------------------------------------
@pytest.fixture
def jobs_file(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.toml"
    # catch_up: every tick fires, even one whose wake-up came late on a loaded machine
    path.write_text('[[jobs]]\nactor = "tick"\nqueue = "sched_test"\nevery = 1\ncatch_up = true\n')
    return path


def start(url: str, cfg: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "neuron_tasks.cli", "scheduler", "--no-builtins", "--config",
                             str(cfg)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    running: list[subprocess.Popen[bytes]] = []
    yield running
    for p in running:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def leader_pid(url: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pid FROM neuron_tasks.scheduler_nodes WHERE leader_since IS NOT NULL "
                               "AND stopped_at IS NULL ORDER BY leader_since DESC LIMIT 1").fetchone()
        if row and fires(url):
            return int(row[0])
        time.sleep(0.2)
    raise AssertionError("no scheduler became leader")


def stop_all(ps: list[subprocess.Popen[bytes]]) -> None:
    for p in ps:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in ps:
        p.wait(20)


@pytest.mark.slow
def test_two_schedulers_one_enqueue_per_tick(sdb: str, jobs_file: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    procs += [start(sdb, jobs_file), start(sdb, jobs_file)]
    leader_pid(sdb)
    first = fires(sdb)[0][0]
    time.sleep(10)
    out = subprocess.run([sys.executable, "-m", "neuron_tasks.cli", "schedules", "--json"], capture_output=True,
                         text=True, env={**os.environ, "NEURON_TASKS_DATABASE_URL": sdb}, cwd=ROOT, timeout=60)
    stop_all(procs)
    times = check_exactly_once(sdb)
    assert len(times) >= 9 and times[0] == first
    assert len({r[1] for r in fires(sdb)}) == 1  # one leader fired them all
    snap = json.loads(out.stdout)
    assert snap["leader"] is not None and [j["name"] for j in snap["jobs"]] == ["tick"]
    assert snap["jobs"][0]["last_fire"] is not None and len(snap["nodes"]) == 2


@pytest.mark.slow
def test_sigkill_of_leader_hands_over_without_duplicate(sdb: str, jobs_file: Path,
                                                        procs: list[subprocess.Popen[bytes]]) -> None:
    procs += [start(sdb, jobs_file), start(sdb, jobs_file)]
    pid = leader_pid(sdb)
    time.sleep(2.5)
    victim = next(p for p in procs if p.pid == pid)
    killed_at = datetime.now(UTC)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    deadline = time.monotonic() + 30
    while len({r[1] for r in fires(sdb)}) < 2:
        assert time.monotonic() < deadline, "no standby took over"
        time.sleep(0.1)
    taken_over = datetime.now(UTC)
    time.sleep(3)
    stop_all(procs)
    times = check_exactly_once(sdb)  # no duplicate, no missing tick across the handover
    rows = fires(sdb)
    assert times[-1] > killed_at
    nodes = [r[1] for r in rows]
    assert nodes == sorted(nodes, key=lambda n: nodes.index(n))  # one leader, then the other
    handover_s = (taken_over - killed_at).total_seconds()
    assert handover_s < 15, f"standby took {handover_s:.1f}s"


def test_feature_jobs_skip_until_installed(sdb: str) -> None:
    from neuron_tasks.scheduler.jobs import part_jobs

    with psycopg.connect(sdb, autocommit=True) as conn:
        conn.execute("TRUNCATE neuron_tasks.vector_indexes CASCADE")
    tuner = next(j for j in part_jobs({"scheduler_tuner_every_s": 1}) if j.name == "neuron_tasks.tuner")
    needs = ScheduledJob("needs", "actor", "x", every=1, requires="neuron_tasks.no_such_table", catch_up=True)
    node = SchedulerNode(sdb, [tuner, needs])
    node.leading.set()
    node._lead_since = datetime.now(UTC) - timedelta(seconds=3)
    assert node.fire_job("needs") in (3, 4)  # the ticks since it leads
    assert node.fire_job("neuron_tasks.tuner") == 1  # catch_up=False: the latest tick only
    with psycopg.connect(sdb, autocommit=True) as conn:
        notes = dict(conn.execute("SELECT job, note FROM neuron_tasks.scheduler_fires").fetchall())
        conn.execute("INSERT INTO neuron_tasks.vector_indexes (name, space, dim) VALUES ('i', 'l2', 2)")
    assert "does not exist" in notes["needs"] and "vec_any_tuned_index is false" in notes["neuron_tasks.tuner"]
    time.sleep(1.1)
    assert node.fire_job("neuron_tasks.tuner") == 1
    assert messages(sdb, "neuron_tasks.tune_vector_indexes")
    with psycopg.connect(sdb, autocommit=True) as conn:
        conn.execute("TRUNCATE neuron_tasks.vector_indexes CASCADE")
