"""Results (acks) and claims: what a process holds is bounded by what it has written.

- While results cannot be written (messages_history locked), a process stops claiming: its
  claimed-plus-unwritten messages stay within batch_size.
- A SIGKILL re-runs at most the jobs that could be running: finished results are written at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from neuron_tasks.testing.cluster import PrivateCluster
from tests.faults.conftest import Workers, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ACTORS = "tests.faults.outage_actors"


def one(url: str, sql: str, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def enqueue_records(url: str, keys: list[str]) -> None:
    """Many `record` messages in one statement (neuron_tasks.enqueue per key)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT neuron_tasks.enqueue('faults', 'record', jsonb_build_array(k), '{}'::jsonb, '{}'::jsonb)"
                     " FROM unnest(%s::text[]) AS k", (keys,))


def recorded(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT key, pid FROM public.test_runs ORDER BY at")]


def workers_alive(url: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        return int(one(url, "SELECT count(*) FROM neuron_tasks.workers WHERE stopped_at IS NULL"
                            " AND heartbeat_at > now() - interval '5 seconds'")) >= n
    return check


def test_unwritten_results_hold_back_claims(pg: PrivateCluster, fdb: str,
                                            spawn_workers: Callable[..., Workers]) -> None:
    batch = 20
    spawn_workers(fdb, processes=2, threads=4, module=ACTORS, batch_size=str(batch))
    wait_for(workers_alive(fdb, 2), "2 worker processes", timeout=60)
    keys = [f"r{i:05d}" for i in range(3000)]
    enqueue_records(fdb, keys)
    wait_for(lambda: int(one(fdb, "SELECT count(*) FROM public.test_runs")) >= 100, "the drain under way")
    peak: Counter[str] = Counter()
    samples = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal samples
        with psycopg.connect(fdb, autocommit=True) as conn:
            while not done.is_set():
                for owner, n in conn.execute(
                        "SELECT lease_owner::text, count(*) FROM neuron_tasks.messages"
                        " WHERE state = 'running' AND lease_owner IS NOT NULL GROUP BY lease_owner"):
                    peak[owner] = max(peak[owner], n)
                samples += 1
                time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    with psycopg.connect(fdb) as locker:
        locker.execute("LOCK TABLE neuron_tasks.messages_history IN ACCESS EXCLUSIVE MODE")
        sampler.start()
        time.sleep(5.0)
        ran_during = int(one(fdb, "SELECT count(*) FROM public.test_runs"))
        locker.commit()
    time.sleep(1.0)
    done.set()
    sampler.join()
    wait_for(lambda: int(one(fdb, "SELECT count(*) FROM neuron_tasks.messages_history")) >= len(keys),
             "every message finished", timeout=90)
    runs = Counter(k for k, _ in recorded(fdb))
    twice = [k for k, n in runs.items() if n > 1]
    print(f"peak running rows per process during the stall: {dict(peak)} over {samples} samples "
          f"(batch_size {batch}); jobs recorded by the end of the stall {ran_during}; "
          f"recorded {len(runs)} keys, {len(twice)} twice")
    assert samples > 20
    assert peak and max(peak.values()) <= batch, dict(peak)
    assert set(runs) == set(keys)
    assert not twice, twice[:10]


def test_sigkill_reruns_at_most_the_running_jobs(pg: PrivateCluster, fdb: str,
                                                 spawn_workers: Callable[..., Workers]) -> None:
    threads = 4
    spawn_workers(fdb, processes=1, threads=threads, module=ACTORS, lease_s="2")
    wait_for(workers_alive(fdb, 1), "the worker process", timeout=60)
    keys = [f"s{i:04d}" for i in range(400)]
    enqueue_records(fdb, keys)
    killed: list[int] = []
    for _ in range(3):
        def a_new_child_recording() -> int | None:
            rows = recorded(fdb)
            pids = Counter(pid for _, pid in rows)
            fresh = [pid for pid in pids if pid not in killed and pids[pid] >= 15]
            return fresh[0] if fresh else None
        pid = wait_for(a_new_child_recording, "a worker child recording jobs", timeout=60)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    wait_for(lambda: int(one(fdb, "SELECT count(*) FROM neuron_tasks.messages_history")) >= len(keys),
             "every message finished", timeout=90)
    time.sleep(0.5)
    rows = recorded(fdb)
    first_by: dict[str, int] = {}
    count = Counter(k for k, _ in rows)
    for key, pid in rows:
        first_by.setdefault(key, pid)
    per_kill = {pid: sum(1 for k, n in count.items() if n > 1 and first_by[k] == pid) for pid in killed}
    print(f"duplicates per SIGKILL (threads={threads}): {list(per_kill.values())}; "
          f"recorded {len(count)} keys, {sum(count.values()) - len(count)} extra runs")
    assert set(count) == set(keys)
    assert all(n <= threads for n in per_kill.values()), per_kill


def test_a_result_for_a_message_taken_over_is_logged_and_counted(pg: PrivateCluster, fdb: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import dramatiq

    from neuron_tasks import PostgresBroker
    from neuron_tasks.config import Settings

    broker = PostgresBroker(fdb, settings=Settings())
    try:
        def job(i: int) -> None: ...

        actor = dramatiq.actor(job, broker=broker, actor_name="job", queue_name="faults")
        broker.enqueue_many([actor.message(i) for i in range(3)])
        consumer = broker.consume("faults")
        claimed = [next(consumer) for _ in range(3)]
        assert all(m is not None for m in claimed)
        with psycopg.connect(fdb, autocommit=True) as conn:  # a sweeper gave two of them to another worker
            conn.execute("UPDATE neuron_tasks.messages SET lease_owner = gen_random_uuid() WHERE id = ANY(%s)",
                         ([m.row_id for m in claimed[:2]],))  # type: ignore[union-attr]
        caplog.set_level("WARNING", logger="neuron_tasks.core.completer")
        consumer.ack(claimed[0])  # type: ignore[arg-type]
        consumer.nack(claimed[1])  # type: ignore[arg-type]
        consumer.ack(claimed[2])  # type: ignore[arg-type]
        wait_for(lambda: broker.completer.pending() == 0, "the results written", timeout=10)
        lines = [r.getMessage() for r in caplog.records if "matched no row" in r.getMessage()]
        print("\n".join(lines), dict(broker.completer.not_recorded))
        assert dict(broker.completer.not_recorded) == {("ack", "taken over"): 1, ("dead letter", "taken over"): 1}
        assert any(claimed[0].message_id in line for line in lines)  # type: ignore[union-attr]
        assert any(claimed[1].message_id in line for line in lines)  # type: ignore[union-attr]
        assert int(one(fdb, "SELECT count(*) FROM neuron_tasks.messages_history")) == 1
        assert consumer.room.held == 0
    finally:
        broker.close()
