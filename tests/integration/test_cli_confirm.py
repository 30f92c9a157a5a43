"""`neuron-tasks cache clear` asks before deleting (or needs --yes from a script), and
`neuron-tasks config reset` says truthfully whether there was a runtime value to remove."""

from __future__ import annotations

import json
import os
import pty

import psycopg

from tests.integration.test_cli_manners import ok, refused, run


def cache_entries(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM neuron_tasks.llm_cache").fetchone()
    assert row is not None
    return int(row[0])


def fill_cache(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE neuron_tasks.llm_cache")
        for key, operation in ((b"\x01", "embed"), (b"\x02", "embed"), (b"\x03", "complete")):
            conn.execute("INSERT INTO neuron_tasks.llm_cache (key, operation, model, input, value, bytes, expires_at) "
                         "VALUES (%s, %s, 'local:m', '{}', '\\x00', 1, now() + interval '1 hour')", (key, operation))


def test_cache_clear_needs_yes_without_a_terminal(clean_db: str) -> None:
    fill_cache(clean_db)
    refused(run(clean_db, "cache", "clear"), "delete 3 cache entries")
    refused(run(clean_db, "llm", "cache", "clear", "--operation", "complete"), "delete 1 complete cache entry")
    assert cache_entries(clean_db) == 3
    assert json.loads(ok(clean_db, "cache", "clear", "--operation", "embed", "--yes", "--json").stdout) == {
        "deleted": 2}
    assert cache_entries(clean_db) == 1
    bad = run(clean_db, "cache", "clear", "--operation", "embeddings", "--yes")
    assert bad.returncode == 1 and "unknown operation 'embeddings'" in bad.stderr and cache_entries(clean_db) == 1


def test_cache_clear_on_a_terminal_asks_and_defaults_to_no(clean_db: str) -> None:
    fill_cache(clean_db)
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"\n")  # just Enter: the default answer, no
        proc = run(clean_db, "cache", "clear", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode != 0 and "Delete 3 cache entries? [y/N]" in proc.stdout + proc.stderr
    assert cache_entries(clean_db) == 3
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"y\n")
        proc = run(clean_db, "cache", "clear", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0 and "deleted 3 cache entries" in proc.stdout
    assert cache_entries(clean_db) == 0


def test_config_reset_reports_truthfully(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.settings WHERE key = 'batch_size'")
    not_set = ok(clean_db, "config", "reset", "batch_size")
    assert "no runtime value was set" in not_set.stdout and "removed" not in not_set.stdout
    assert json.loads(ok(clean_db, "config", "reset", "batch_size", "--json").stdout) == {
        "key": "batch_size", "removed": False}
    ok(clean_db, "config", "set", "batch_size", "50")
    assert json.loads(ok(clean_db, "config", "reset", "batch_size", "--json").stdout) == {
        "key": "batch_size", "removed": True}
    ok(clean_db, "config", "set", "batch_size", "60")
    assert "batch_size: runtime value removed" in ok(clean_db, "config", "reset", "batch_size").stdout
    assert json.loads(ok(clean_db, "config", "reset", "batch_size", "--json").stdout)["removed"] is False
    unknown = run(clean_db, "config", "reset", "no_such_setting")
    assert unknown.returncode == 1 and "unknown setting 'no_such_setting'" in unknown.stderr


def test_reset_setting_in_sql_says_whether_a_value_was_removed(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.settings WHERE key = 'batch_size'")
        assert conn.execute("SELECT neuron_tasks.reset_setting('batch_size')").fetchone() == (False,)
        conn.execute("SELECT neuron_tasks.set_setting('batch_size', '70')")
        assert conn.execute("SELECT neuron_tasks.reset_setting('batch_size')").fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM neuron_tasks.settings WHERE key = 'batch_size'").fetchone() == (0,)
