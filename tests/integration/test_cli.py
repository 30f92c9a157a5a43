"""The `neuron-tasks` command as a user runs it (subprocesses), and migrations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import dramatiq
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from neuron_tasks import PostgresBroker
from neuron_tasks.core import migrate
from tests.conftest import ROOT


def cli(
    url: str, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "neuron_tasks.cli", *args],
        capture_output=True, text=True, env=environ, cwd=ROOT, timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"neuron-tasks {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_explains_commands(clean_db: str) -> None:
    out = cli(clean_db, "--help").stdout
    for command in ("db", "worker", "enqueue", "status", "dead-letters", "demo"):
        assert command in out
    assert "--processes" in cli(clean_db, "worker", "--help").stdout


def test_enqueue_status_and_dead_letters_flow(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    url = broker.url

    @dramatiq.actor(max_retries=0)
    def explode(n: int) -> None:
        raise RuntimeError(f"exploded {n}")

    out = json.loads(cli(url, "enqueue", "explode", "--args", "[7]", "--json", "--tenant", "acme").stdout)
    assert out["actor"] == "explode" and out["message_id"]
    broker.join("default", timeout=10_000, fail_fast=False)

    status = json.loads(cli(url, "status", "--json").stdout)
    [queue] = status["queues"]
    assert (queue["queue"], queue["failed"], queue["pending"]) == ("default", 1, 0)
    assert any(w["status"] == "running" for w in status["workers"]) or status["workers"] == []

    listed = json.loads(cli(url, "dead-letters", "list", "--json", "--tenant", "acme").stdout)
    assert [d["message_id"] for d in listed] == [out["message_id"]]
    assert json.loads(cli(url, "dead-letters", "list", "--json", "--actor", "other").stdout) == []
    shown = json.loads(cli(url, "dead-letters", "show", out["message_id"], "--json").stdout)
    assert shown["errors"][0]["message"] == "exploded 7"
    assert "explode" in shown["errors"][0]["traceback"]
    human = cli(url, "dead-letters", "show", out["message_id"]).stdout
    assert "exploded 7" in human

    requeued = json.loads(cli(url, "dead-letters", "requeue", "--all", "--queue", "default", "--yes", "--json").stdout)
    assert requeued == {"requeued": [out["message_id"]]}
    broker.join("default", timeout=10_000, fail_fast=False)
    purged = json.loads(cli(url, "dead-letters", "purge", "--yes", "--json").stdout)
    assert purged == {"purged": 1}
    assert "Queues" in cli(url, "status").stdout


def test_cli_bad_input_is_a_clear_error(clean_db: str) -> None:
    proc = cli(clean_db, "enqueue", "x", "--args", "{not json", check=False)
    assert proc.returncode != 0 and "not valid JSON" in proc.stderr
    proc = cli(clean_db, "enqueue", "x", "--args", "{}", check=False)
    assert proc.returncode != 0 and "JSON array" in proc.stderr
    proc = cli(clean_db, "enqueue", "1bad", check=False)
    assert proc.returncode == 1 and "actor name '1bad' is not valid" in proc.stderr
    proc = cli(clean_db, "dead-letters", "show", "nope", check=False)
    assert proc.returncode == 1 and "no message 'nope'" in proc.stderr
    proc = cli(clean_db, "status", check=False, env={"NEURON_TASKS_BATCH_SIZE": "-1"})
    assert proc.returncode == 1 and "batch_size" in proc.stderr


def test_db_upgrade_is_idempotent_and_concurrency_safe(server_url: str) -> None:
    name = "nt_migrate_race"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    try:
        results: list[object] = []

        def run() -> None:
            try:
                results.append(len(migrate.upgrade(url)))
            except Exception as exc:  # the assertion below shows it
                results.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == [0, 0, len(migrate.load_migrations())]  # type: ignore[type-var]
        assert json.loads(cli(url, "db", "upgrade", "--json").stdout)["applied"] == []
        assert json.loads(cli(url, "db", "status", "--json").stdout)["pending"] == []
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_zero_setup_starts_an_embedded_postgres(tmp_path: Path) -> None:
    data = Path("/var/tmp") / f"neuron-tasks-zero-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "NEURON_TASKS_DATABASE_URL"}
    env["NEURON_TASKS_EMBEDDED_DIR"] = str(data / "pgdata")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "neuron_tasks.cli", "db", "upgrade", "--json"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert str(data / "pgdata") in info["database"]
        assert info["applied"][:2] == ["001_messages", "002_semantics"]
    finally:
        subprocess.run(["rm", "-rf", str(data)], check=False)


def test_tenants_and_topics_commands(clean_db: str) -> None:
    out = json.loads(cli(clean_db, "tenants", "set", "acme", "--qps", "5", "--burst", "10",
                         "--tokens-per-minute", "1000", "--json").stdout)
    assert (out["name"], out["qps"], out["burst"], out["tokens_per_minute"]) == ("acme", 5.0, 10.0, 1000)
    listed = json.loads(cli(clean_db, "tenants", "list", "--json").stdout)
    assert [t["name"] for t in listed] == ["acme"]
    shown = json.loads(cli(clean_db, "tenants", "show", "acme", "--json").stdout)
    assert shown["tokens_this_minute"] == 0 and shown["throttled"] == 0
    bad = cli(clean_db, "tenants", "set", "acme", "--qps", "-1", check=False)
    assert bad.returncode == 1 and "qps=-1.0 must be a number from" in bad.stderr
    assert "no tenant 'nobody'" in cli(clean_db, "tenants", "show", "nobody", check=False).stderr

    topic = json.loads(cli(clean_db, "topics", "set", "emails", "--concurrency", "2", "--retries", "1",
                           "--delay-s", "0.5", "--priority", "3", "--json").stdout)
    assert (topic["concurrency"], topic["max_retries"], topic["delay_s"], topic["priority"]) == (2, 1, 0.5, 3)
    assert json.loads(cli(clean_db, "topics", "list", "--json").stdout)[0]["name"] == "emails"
    with psycopg.connect(clean_db) as conn:
        assert conn.execute("SELECT count(*) FROM neuron_tasks.topic_slots").fetchone() == (2,)
    bad = cli(clean_db, "topics", "set", "emails", "--concurrency", "0", check=False)
    assert bad.returncode == 1 and "concurrency=0 must be an integer from 1" in bad.stderr
    enq = cli(clean_db, "enqueue", "send", "--topic", "nope", check=False)
    assert enq.returncode == 1 and "unknown topic nope" in enq.stderr
    assert "Topics" in cli(clean_db, "topics", "list").stdout
    cli(clean_db, "topics", "delete", "emails", "--yes")
    cli(clean_db, "tenants", "delete", "acme", "--yes")
    assert json.loads(cli(clean_db, "tenants", "list", "--json").stdout) == []
