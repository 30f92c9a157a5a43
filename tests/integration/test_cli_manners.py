"""How `neuron-tasks` behaves toward the person or script running it: destructive commands ask (or
need --yes), every command can answer in JSON, help shows no `<bool>` for flags, and a mistake is
one clear line, never a traceback."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from neuron_tasks import __version__
from tests.conftest import ROOT
from tests.integration.dashboard_helpers import enqueue


def run(url: str, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """The command as a script runs it: stdin is not a terminal unless one is given."""
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "neuron_tasks.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, stdin=stdin)


def ok(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = run(url, *args)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1 and "--yes" in lines[0], proc.stderr
    for word in words:
        assert word in lines[0], proc.stderr


def dead_letters(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM neuron_tasks.messages WHERE state = 'failed'").fetchone()
    assert row is not None
    return int(row[0])


# -- 1. destructive commands ------------------------------------------------------------------
def test_dead_letters_purge_and_requeue_all_need_yes_without_a_terminal(clean_db: str) -> None:
    ok(clean_db, "db", "upgrade")
    for n in range(3):
        enqueue(clean_db, "explode", [n], queue="dq", failed=True)
    refused(run(clean_db, "dead-letters", "purge"), "delete 3 dead letter(s)")
    refused(run(clean_db, "dead-letters", "requeue", "--all"), "requeue 3 dead letter(s)")
    assert dead_letters(clean_db) == 3
    assert json.loads(ok(clean_db, "dead-letters", "purge", "--yes", "--json").stdout) == {"purged": 3}
    assert dead_letters(clean_db) == 0


def test_on_a_terminal_the_question_defaults_to_no(clean_db: str) -> None:
    ok(clean_db, "db", "upgrade")
    enqueue(clean_db, "explode", [1], failed=True)
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"\n")  # just Enter: the default answer, no
        proc = run(clean_db, "dead-letters", "purge", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode != 0 and "Delete 1 dead letter(s) of all queues? [y/N]" in proc.stdout + proc.stderr
    assert dead_letters(clean_db) == 1


def test_deleting_tenants_topics_indexes_and_pipelines_needs_yes(clean_db: str) -> None:
    ok(clean_db, "tenants", "set", "acme", "--qps", "5")
    refused(run(clean_db, "tenants", "delete", "acme"), "tenant acme")
    assert json.loads(ok(clean_db, "tenants", "list", "--json").stdout)[0]["name"] == "acme"
    assert json.loads(ok(clean_db, "tenants", "delete", "acme", "--yes", "--json").stdout) == {
        "deleted": "tenant", "name": "acme"}
    assert json.loads(ok(clean_db, "tenants", "list", "--json").stdout) == []
    assert run(clean_db, "tenants", "delete", "acme", "--yes").returncode == 1

    ok(clean_db, "topics", "set", "emails", "--concurrency", "2")
    refused(run(clean_db, "topics", "delete", "emails"), "topic emails")
    assert json.loads(ok(clean_db, "topics", "delete", "emails", "--yes", "--json").stdout)["name"] == "emails"
    assert json.loads(ok(clean_db, "topics", "list", "--json").stdout) == []

    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.vector_indexes WHERE name = 'manners'")
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipelines").fetchall():
            conn.execute("SELECT neuron_tasks.drop_pipeline(%s, true)", [name])
        conn.execute("DROP TABLE IF EXISTS public.manners_src CASCADE")
        conn.execute("CREATE TABLE public.manners_src (id bigint PRIMARY KEY, body text)")
    ok(clean_db, "index", "create", "manners", "--dim", "3")
    added = json.loads(ok(clean_db, "index", "add", "manners", "--random", "5", "--json").stdout)
    assert added["index"] == "manners" and added["added"] == 5 and added["snapshot"]["live"] == 5
    refused(run(clean_db, "index", "drop", "manners"), "index manners")
    assert json.loads(ok(clean_db, "index", "stats", "manners", "--json").stdout)["indexes"][0]["live_count"] == 5
    assert json.loads(ok(clean_db, "index", "drop", "manners", "--yes", "--json").stdout) == {
        "dropped": "index", "name": "manners"}

    ok(clean_db, "pipeline", "create", "manners_pl", "--source", "manners_src", "--key", "id", "--data", "body")
    refused(run(clean_db, "pipeline", "drop", "manners_pl"), "pipeline manners_pl")
    assert [p["pipeline"] for p in json.loads(ok(clean_db, "pipeline", "list", "--json").stdout)] == ["manners_pl"]
    dropped = json.loads(ok(clean_db, "pipeline", "drop", "manners_pl", "--drop-destination", "--yes",
                            "--json").stdout)
    assert dropped == {"dropped": "pipeline", "name": "manners_pl", "destination_dropped": True}
    assert json.loads(ok(clean_db, "pipeline", "list", "--json").stdout) == []


# -- 2. --version and --json ------------------------------------------------------------------
def test_version_and_json_of_config_changes(clean_db: str) -> None:
    proc = ok(clean_db, "--version")
    assert proc.stdout.strip() == f"neuron-tasks {__version__}"
    assert json.loads(ok(clean_db, "config", "set", "batch_size", "7", "--json").stdout) == {
        "key": "batch_size", "value": "7", "source": "runtime"}
    assert json.loads(ok(clean_db, "config", "reset", "batch_size", "--json").stdout) == {
        "key": "batch_size", "removed": True}


# -- 3. help and values that start with a minus -----------------------------------------------
def test_flags_show_no_bool_in_help(clean_db: str) -> None:
    for args in ([], ["worker"], ["dead-letters", "purge"], ["index", "add"], ["config", "show"]):
        out = ok(clean_db, *args, "--help").stdout
        assert "--help" in out and "<bool>" not in out, out
    assert "<str>" in ok(clean_db, "--help").stdout  # options that take a value still say which


def test_config_set_takes_a_negative_value_without_double_dash(clean_db: str) -> None:
    proc = run(clean_db, "config", "set", "batch_size", "-5")
    assert proc.returncode == 1, proc.stderr
    assert "No such option" not in proc.stderr
    assert "batch_size" in proc.stderr and "greater than or equal to 1" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- 4. mistakes are one clear line -----------------------------------------------------------
def _one_error_line(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], proc.stderr


def test_unreachable_database_is_one_line_naming_host_and_port(clean_db: str) -> None:
    started = time.monotonic()
    proc = run(clean_db, "--database-url", "postgresql://nobody@127.0.0.1:1/x", "status")
    assert time.monotonic() - started < 5
    assert proc.returncode == 1
    _one_error_line(proc, "cannot connect to PostgreSQL at 127.0.0.1:1")


def test_missing_actor_module_is_one_line(clean_db: str) -> None:
    proc = run(clean_db, "worker", "no_such_module_for_manners", "--metrics-port", "0")
    _one_error_line(proc, "no_such_module_for_manners")


def test_scheduler_file_errors_keep_their_square_brackets(clean_db: str, tmp_path: Path) -> None:
    no_actor = tmp_path / "no_actor.toml"
    no_actor.write_text("[[jobs]]\nevery = 60\n")
    _one_error_line(run(clean_db, "scheduler", "--no-builtins", "--config", str(no_actor)), "[[jobs]]", "actor")
    no_jobs = tmp_path / "no_jobs.toml"
    no_jobs.write_text("[job]\nactor = \"report\"\nevery = 60\n")
    _one_error_line(run(clean_db, "scheduler", "--no-builtins", "--config", str(no_jobs)), "no [[jobs]] entries")


@pytest.mark.parametrize("markup", ["[bold]x[/bold]", "[[jobs]]"])
def test_error_lines_print_markup_as_typed(clean_db: str, markup: str) -> None:
    proc = run(clean_db, "tenants", "show", markup)
    _one_error_line(proc, markup)
