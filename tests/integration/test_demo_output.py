"""What `neuron-tasks demo` shows: the counts of this run only (an earlier run on the same
database adds nothing), and its actors run without Dramatiq's warning about discarded results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from neuron_tasks.demo.run import RunCounts
from tests.conftest import ROOT, worker_env

DEMO_QUEUES = ("demo", "demo_slow")  # neuron_tasks.demo.actors (not imported: its actors need a broker)
HISTORY = ("INSERT INTO neuron_tasks.messages_history (id, message_id, queue_name, actor_name, priority, attempts, "
           "retries, enqueued_at) VALUES (%s, %s, %s, 'add', 0, 1, 0, now() - %s * interval '1 second')")


def test_counts_are_those_of_this_run(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:  # an earlier run: 5 finished, 1 dead letter
        for i in range(5):
            conn.execute(HISTORY, (i, f"old-{i}", "demo", 3600))
        conn.execute("SELECT neuron_tasks.enqueue('demo', 'always_fails', '[\"old\"]')")
        conn.execute("UPDATE neuron_tasks.messages SET state = 'failed', failed_at = now(), "
                     "enqueued_at = now() - interval '1 hour'")
    with ConnectionPool(clean_db, min_size=1, max_size=2, open=True) as pool:
        counts = RunCounts(pool, DEMO_QUEUES)
        time.sleep(0.01)
        with psycopg.connect(clean_db, autocommit=True) as conn:  # this run
            for i in range(3):
                conn.execute(HISTORY, (100 + i, f"new-{i}", "demo_slow" if i == 2 else "demo", 0))
            conn.execute("SELECT neuron_tasks.enqueue('demo', 'add', '[1, 2]')")
            conn.execute("SELECT neuron_tasks.enqueue('elsewhere', 'add', '[1, 2]')")  # not a demo queue
        rows = {r["queue"]: r for r in counts.queues_status()}
        assert sorted(rows) == ["demo", "demo_slow"]
        assert (rows["demo"]["finished"], rows["demo"]["pending"], rows["demo"]["failed"]) == (2, 1, 0)
        assert rows["demo_slow"]["finished"] == 1
        assert counts.dead_letters() == []


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_actors_store_their_results_without_warnings(clean_db: str, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "neuron_tasks.cli", "worker", "neuron_tasks.demo.actors",
                                 "-p", "1", "-t", "2", "--metrics-port", "0"], cwd=ROOT, env=worker_env(clean_db),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute("TRUNCATE neuron_tasks.results")
            conn.execute("SELECT neuron_tasks.enqueue('demo', 'add', jsonb_build_array(i, i)) "
                         "FROM generate_series(1, 20) i")
            deadline = time.monotonic() + 90
            while conn.execute("SELECT count(*) FROM neuron_tasks.messages_history "
                               "WHERE actor_name = 'add'").fetchone() != (20,):
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.2)
            stored = conn.execute("SELECT count(*) FROM neuron_tasks.results").fetchone()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert stored == (20,)
    text = log.read_text()
    assert "store_results" not in text and "has been discarded" not in text, text[-4000:]
