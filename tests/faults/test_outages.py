"""PostgreSQL outages: stopped (immediate) and started again under live workers and producers.

- An outage longer than the lease re-runs nothing a live worker holds: no sweeper reclaims
  before every live worker had a full lease to reconnect and renew.
- Workers claim again within about a second of the server accepting connections.
- A producer's send() fails within enqueue_timeout_s with DatabaseUnavailable, whether it was
  connected before the outage or is created during it.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from neuron_tasks.config import Settings
from neuron_tasks.errors import DatabaseUnavailable
from neuron_tasks.testing.cluster import PrivateCluster, StopMode
from tests.faults.conftest import Workers, enqueue, runs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ACTORS = "tests.faults.outage_actors"


def create_marks(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.outage_runs (token uuid PRIMARY KEY, key text NOT NULL, pid int,"
                     " at timestamptz DEFAULT clock_timestamp())")


def marks(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT key, pid FROM public.outage_runs ORDER BY at").fetchall()]


def one(url: str, sql: str, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def live_workers(url: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        return int(one(url, "SELECT count(*) FROM neuron_tasks.workers WHERE stopped_at IS NULL"
                            " AND heartbeat_at > now() - interval '5 seconds'")) >= n
    return check


@pytest.mark.parametrize(("mode", "down_s"), [("immediate", 8.0), ("fast", 1.0)],
                         ids=["immediate-stop-longer-than-the-lease", "fast-restart-shorter-than-the-lease"])
def test_outage_reruns_nothing(pg: PrivateCluster, fdb: str, spawn_workers: Callable[..., Workers],
                               mode: StopMode, down_s: float) -> None:
    """PostgreSQL stops (immediate or fast) for longer or shorter than the lease (3 s): no job
    runs twice, nothing is lost, nobody counts a death."""
    create_marks(fdb)
    workers = spawn_workers(fdb, processes=2, threads=4, module=ACTORS, lease_s="3", batch_size="10")
    wait_for(live_workers(fdb, 2), "2 worker processes", timeout=60)
    keys = [f"k{i:02d}" for i in range(40)]
    for i, key in enumerate(keys):
        enqueue(fdb, "patient_sleepy", [key, 1.0 + (i % 5) / 4])

    def both_hold_messages() -> bool:
        return int(one(fdb, "SELECT count(DISTINCT lease_owner) FROM neuron_tasks.messages"
                            " WHERE state = 'running'")) >= 2
    wait_for(both_hold_messages, "both processes holding messages", timeout=30)
    started_before = sum(1 for k, _ in marks(fdb) if k.startswith("start:"))
    pg.stop(mode)
    time.sleep(down_s)
    pg.start()

    def all_done() -> bool:
        return len({k for k, _ in marks(fdb) if k.startswith("done:")}) >= len(keys)
    wait_for(all_done, "every job done", timeout=60)
    time.sleep(1.0)  # late duplicates, if any, would show now
    got = marks(fdb)
    starts = Counter(k for k, _ in got if k.startswith("start:"))
    dones = Counter(k for k, _ in got if k.startswith("done:"))
    twice = sorted(k for k, n in starts.items() if n > 1)
    with psycopg.connect(fdb, autocommit=True) as conn:
        attempts = Counter(r[0] for r in conn.execute("SELECT attempts FROM neuron_tasks.messages_history"))
    left = int(one(fdb, "SELECT count(*) FROM neuron_tasks.messages"))
    log = workers.log_text()
    print(f"started before the outage: {started_before}; starts {sum(starts.values())}, dones "
          f"{sum(dones.values())}, started twice {len(twice)}, history attempts {dict(attempts)}, rows left {left}")
    assert started_before > 0
    assert not twice, f"{len(twice)} jobs started twice: {twice[:10]}"
    assert set(starts) == {f"start:{k}" for k in keys} and set(dones) == {f"done:{k}" for k in keys}
    assert all(n == 1 for n in dones.values())
    assert attempts == Counter({1: len(keys)}), f"re-claimed messages (attempts > 1): {dict(attempts)}"
    assert left == 0, "messages left behind (dead-lettered or stuck)"
    assert "reclaimed" not in log, "a sweeper counted live workers as dead"
    assert "matched no row" not in log, "a result was written after its message was taken over"


def test_workers_resume_promptly_after_outage(pg: PrivateCluster, fdb: str,
                                              spawn_workers: Callable[..., Workers]) -> None:
    spawn_workers(fdb, processes=2, threads=2, module=ACTORS)
    wait_for(live_workers(fdb, 2), "2 worker processes", timeout=60)
    enqueue(fdb, "record", ["warm"])
    wait_for(lambda: runs(fdb, "warm"), "a job before the outage")
    delays = []
    for cycle in range(3):
        pg.stop("immediate")
        time.sleep(10.0)
        pg.start()  # returns once the server accepts connections
        with psycopg.connect(fdb, autocommit=True) as conn:
            back = conn.execute("SELECT clock_timestamp()").fetchone()
            conn.execute("SELECT neuron_tasks.enqueue('faults', 'record', %s::jsonb, '{}'::jsonb, '{}'::jsonb)",
                         (f'["cycle{cycle}"]',))
        wait_for(lambda c=cycle: runs(fdb, f"cycle{c}"), f"the job of cycle {cycle}", timeout=30)
        ran = one(fdb, "SELECT at FROM public.test_runs WHERE key = %s", (f"cycle{cycle}",))
        assert back is not None
        delays.append((ran - back[0]).total_seconds())
    print(f"seconds from the server accepting connections to the job running: {delays}; "
          f"median {statistics.median(delays):.2f}")
    assert max(delays) < 5.0, delays


def test_send_fails_fast_when_database_is_down(pg: PrivateCluster, fdb: str) -> None:
    timeout_s = 2.0

    def producer() -> tuple[PostgresBroker, dramatiq.Actor[[str], None]]:
        broker = PostgresBroker(fdb, settings=Settings(enqueue_timeout_s=timeout_s))

        def noop(key: str) -> None: ...

        return broker, dramatiq.actor(noop, broker=broker, actor_name="noop", queue_name="faults")

    def timed_send(actor: dramatiq.Actor[[str], None]) -> tuple[float, BaseException | None]:
        t0 = time.monotonic()
        try:
            actor.send("x")
        except BaseException as exc:  # what it raises is the point
            return time.monotonic() - t0, exc
        return time.monotonic() - t0, None

    connected, connected_actor = producer()
    connected_actor.send("before")  # its pool is open and holds connections
    pg.stop("immediate")
    try:
        took_connected, raised_connected = timed_send(connected_actor)
        fresh, fresh_actor = producer()
        took_fresh, raised_fresh = timed_send(fresh_actor)
    finally:
        pg.start()
    print(f"send() while down: connected producer {took_connected:.2f}s {raised_connected!r}; "
          f"new producer {took_fresh:.2f}s {raised_fresh!r}")
    assert isinstance(raised_connected, DatabaseUnavailable), raised_connected
    assert isinstance(raised_fresh, DatabaseUnavailable), raised_fresh
    assert took_connected < timeout_s + 2.0
    assert took_fresh < timeout_s + 2.0
    # Back up: the producer that was connected sends again (its pool reconnects).
    t0 = time.monotonic()
    connected_actor.send("after")
    print(f"first send after the restart: {time.monotonic() - t0:.2f}s")
    assert int(one(fdb, "SELECT count(*) FROM neuron_tasks.messages WHERE actor_name = 'noop'")) == 2
    connected.close()
    fresh.close()


def test_scheduler_sweep_waits_a_lease_after_a_restart(pg: PrivateCluster, fdb: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_tasks.core import maintenance

    monkeypatch.setenv("NEURON_TASKS_LEASE_S", "1.5")  # the tick reads Settings() (+ runtime values)
    enqueue(fdb, "record", ["held"])
    with psycopg.connect(fdb, autocommit=True) as conn:  # a live worker's claim, its lease expired in the outage
        conn.execute("UPDATE neuron_tasks.messages SET state = 'running', lease_owner = gen_random_uuid(),"
                     " lease_expires_at = now() - interval '1 minute'")
    pg.restart("immediate")
    with psycopg.connect(fdb, autocommit=True) as conn:
        first = maintenance.sweep_tick(conn)
        state = one(fdb, "SELECT state FROM neuron_tasks.messages")
        time.sleep(2.2)  # lease_s + heartbeat_s = 2.0
        later = maintenance.sweep_tick(conn)
    print(f"right after the restart: {first!r} (message {state}); a lease later: {later!r}")
    assert first.startswith("skipped: the server restarted"), first
    assert state == "running"
    assert later == "reclaimed 1", later
