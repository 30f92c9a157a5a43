"""Runtime settings: stored in Postgres, validated in SQL and Python, applied live by workers;
`config show` reflects default, file, environment and runtime sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from neuron_tasks.core import runtime
from neuron_tasks.errors import ConfigurationError
from tests.conftest import ROOT


@pytest.fixture
def runtime_db(clean_db: str) -> str:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("TRUNCATE neuron_tasks.settings")
    return clean_db


def test_bad_values_are_refused_and_nothing_is_stored(runtime_db: str) -> None:
    with psycopg.connect(runtime_db, autocommit=True) as conn:
        for key, value, needle in [
            ("no_such_setting", "1", "unknown setting"),
            ("database_url", "postgresql://x", "cannot change while processes run"),
            ("batch_size", "abc", "must be an integer"),
            ("batch_size", "0", "must be >= 1"),
            ("batch_size", "10001", "must be <= 10000"),
            ("lease_s", "0.1", "must be > 0.2"),
            ("ack_linger_ms", "NaN", "must be a finite number"),
            ("tenant_policy", "maybe", "must be one of default, refuse"),
            ("tuner_strategy", "random", "must match"),
            ("queue_depth", "null", "needs a value"),
        ]:
            with pytest.raises(psycopg.Error, match=needle):
                conn.execute("SELECT neuron_tasks.set_setting(%s, %s)", (key, value))
        for key, value in [("batch_size", "-3"), ("nope", "1"), ("pool_max_size", "4"), ("naptime_ms", "1.5")]:
            with pytest.raises(ConfigurationError):
                runtime.set_value(conn, key, value)
        assert conn.execute("SELECT count(*) FROM neuron_tasks.settings").fetchone() == (0,)
        assert runtime.set_value(conn, "default_tenant_qps", "2.5") == "2.5"
        assert runtime.set_value(conn, "default_tenant_qps", "null") is None
        view = dict(conn.execute("SELECT key, source FROM neuron_tasks.settings_view").fetchall())
        assert view["default_tenant_qps"] == "runtime" and view["batch_size"] == "default"


def test_config_show_reflects_all_four_sources(runtime_db: str, tmp_path: Path) -> None:
    config = tmp_path / "neuron_tasks.toml"
    config.write_text("queue_depth = 555\nnaptime_ms = 750\n[neuron_tasks]\nmax_retries = 7\n")
    with psycopg.connect(runtime_db, autocommit=True) as conn:
        runtime.set_value(conn, "batch_size", "9")
        runtime.set_value(conn, "max_retries", "2")  # runtime beats the file
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": runtime_db, "NEURON_TASKS_CONFIG": str(config),
           "NEURON_TASKS_NAPTIME_MS": "1500", "NEURON_TASKS_LLM_HTTP_API_KEY": "sk-secret"}
    proc = subprocess.run([sys.executable, "-m", "neuron_tasks.cli", "config", "show", "--json"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["key"]: r for r in json.loads(proc.stdout)}
    assert (rows["batch_size"]["value"], rows["batch_size"]["source"]) == ("9", "runtime")
    assert (rows["max_retries"]["value"], rows["max_retries"]["source"]) == ("2", "runtime")
    assert (rows["naptime_ms"]["value"], rows["naptime_ms"]["source"]) == ("1500", "env")  # env beats the file
    assert (rows["queue_depth"]["value"], rows["queue_depth"]["source"]) == ("555", "file")
    assert (rows["timeout_ms"]["value"], rows["timeout_ms"]["source"]) == ("30000", "default")
    assert rows["naptime_ms"]["unit"] == "ms" and rows["naptime_ms"]["live"] is True
    assert rows["database_url"]["live"] is False
    assert rows["llm_http_api_key"]["value"] == "********"
    assert all(r["description"] for r in rows.values())
    # The settings objects themselves follow the same precedence.
    from neuron_tasks.config import Settings

    os.environ["NEURON_TASKS_CONFIG"] = str(config)
    try:
        s = Settings(_env_file=None)
        assert (s.queue_depth, s.max_retries) == (555, 7)
    finally:
        del os.environ["NEURON_TASKS_CONFIG"]
    human = subprocess.run([sys.executable, "-m", "neuron_tasks.cli", "config", "set", "batch_size", "0"],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert human.returncode == 1 and "greater than or equal to 1" in human.stderr


def test_a_running_worker_applies_batch_size_and_naptime_live(broker: PostgresBroker, runtime_db: str) -> None:
    import threading

    lock = threading.Lock()
    now_running = [0]
    running_peak: list[int] = []

    @dramatiq.actor(queue_name="live")
    def slow(i: int) -> None:
        with lock:
            now_running[0] += 1
            running_peak.append(now_running[0])
        time.sleep(0.2)
        with lock:
            now_running[0] -= 1

    with psycopg.connect(runtime_db, autocommit=True) as conn:
        runtime.set_value(conn, "naptime_ms", "60000")
    broker.reload_settings()
    assert broker.settings.naptime_ms == 60000
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        # One job first, so the consumer's first claim (sized with the batch_size it started with)
        # is over before the change: a claim already in flight keeps the size it was asked with.
        broker.enqueue(slow.message(-1))
        broker.join("live", timeout=30_000)
        running_peak.clear()
        with psycopg.connect(runtime_db, autocommit=True) as conn:
            runtime.set_value(conn, "batch_size", "3")
            deadline = time.monotonic() + 10
            while broker.settings.batch_size != 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert broker.settings.batch_size == 3, "applied through NOTIFY without a restart"
            broker.enqueue_many([slow.message(i) for i in range(24)])
            broker.join("live", timeout=30_000)
            assert len(running_peak) == 24
            assert max(running_peak) <= 3, "8 threads, but a worker holds at most batch_size messages"
            assert max(running_peak) >= 2

            # naptime: a message whose NOTIFY never comes is found by polling every naptime_ms.
            runtime.set_value(conn, "naptime_ms", "200")
            deadline = time.monotonic() + 10
            while broker.settings.naptime_ms != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            conn.execute("SET session_replication_role = replica")  # no trigger, no NOTIFY
            conn.execute("SELECT neuron_tasks.enqueue('live', 'slow', '[99]')")
            conn.execute("SET session_replication_role = origin")
            sent = time.monotonic()
            left = 1
            while left and time.monotonic() - sent < 20:
                sql = "SELECT count(*) FROM neuron_tasks.messages WHERE queue_name = 'live'"
                (left,) = conn.execute(sql).fetchone()
                time.sleep(0.05)
            assert left == 0 and time.monotonic() - sent < 10, "found by polling at the new 200 ms naptime"
    finally:
        worker.stop()


def test_scheduler_and_tuner_pick_up_runtime_settings(runtime_db: str) -> None:
    from neuron_tasks.scheduler.node import SchedulerNode
    from neuron_tasks.scheduler.settings import SchedulerSettings
    from neuron_tasks.vectors.settings import VectorSettings

    node = SchedulerNode(runtime_db, [], settings=SchedulerSettings(scheduler_poll_s=0.25))
    with psycopg.connect(runtime_db, autocommit=True) as conn:
        runtime.set_value(conn, "scheduler_max_catchup", "17")
        runtime.set_value(conn, "max_retries", "6")
        runtime.set_value(conn, "tuner_target_recall", "0.9")
    runtime._cache.clear()  # as if max_age_s had passed
    node._refresh_settings()
    assert node.settings.scheduler_max_catchup == 17
    assert node.settings.scheduler_poll_s == 0.25, "what the process was started with stays under runtime values"
    assert node.core.max_retries == 6
    assert runtime.overlay(VectorSettings(), runtime_db).tuner_target_recall == 0.9
    with psycopg.connect(runtime_db, autocommit=True) as conn:
        runtime.reset_value(conn, "scheduler_max_catchup")
    runtime._cache.clear()
    node._refresh_settings()
    assert node.settings.scheduler_max_catchup == SchedulerSettings().scheduler_max_catchup


def test_every_part_publishes_its_settings_and_reads_runtime_values(runtime_db: str) -> None:
    """Pipelines, defrag and LLM settings are in setting_defs like the core's, and their jobs read
    `config set` values through runtime.overlay."""
    from neuron_tasks.pipelines import PipelineSettings
    from neuron_tasks.vectors.defrag_settings import DefragSettings

    with psycopg.connect(runtime_db, autocommit=True) as conn:
        keys = {k for (k,) in conn.execute("SELECT key FROM neuron_tasks.setting_defs").fetchall()}
        assert {"pipelines_sync_slice_s", "pipelines_retry_backoff_s", "defrag_probe_k", "llm_batch_size"} <= keys
        with pytest.raises(psycopg.Error, match="must be > 0"):
            conn.execute("SELECT neuron_tasks.set_setting('pipelines_sync_slice_s', '0')")
        with pytest.raises(psycopg.Error, match="must be >= 1"):
            conn.execute("SELECT neuron_tasks.set_setting('defrag_probe_k', '0')")
        runtime.set_value(conn, "pipelines_sync_slice_s", "5")
        runtime.set_value(conn, "defrag_probe_k", "7")
    runtime.values_for(runtime_db, max_age_s=0)  # overlay re-reads at most every 2 s: read now
    assert runtime.overlay(PipelineSettings(), runtime_db).pipelines_sync_slice_s == 5.0
    assert runtime.overlay(DefragSettings(), runtime_db).defrag_probe_k == 7
