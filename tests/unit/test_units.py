"""Broker-free unit tests: option validation, SQL registry, migrations on disk, helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer

from neuron_tasks.cli.app import parse_duration
from neuron_tasks.config import Settings
from neuron_tasks.core import migrate
from neuron_tasks.core.broker_test_api import rebuild_exception
from neuron_tasks.core.options import columns, deadline_of
from neuron_tasks.errors import DeadLettered, InvalidOption
from neuron_tasks.sql import q, queries


def test_seed_defaults() -> None:
    s = Settings(_env_file=None)
    assert (s.naptime_ms, s.batch_size, s.queue_depth, s.timeout_ms, s.max_retries) == (1000, 100, 10000, 30000, 3)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_TASKS_BATCH_SIZE", "7")
    assert Settings().batch_size == 7
    monkeypatch.setenv("NEURON_TASKS_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="batch_size"):
        Settings()


def test_columns_validate_options() -> None:
    cols = columns({"priority": 3, "tenant": "acme", "topic": "t1", "deadline": 0}, default_priority=0, delay=10)
    assert (cols.priority, cols.delay_ms, cols.tenant, cols.topic) == (3, 10, "acme", "t1")
    assert cols.deadline == datetime(1970, 1, 1, tzinfo=UTC)
    assert columns({}, default_priority=7, delay=None).priority == 7
    for bad in ({"priority": "1"}, {"priority": True}, {"priority": 2**40}, {"tenant": ""}, {"topic": "a b"}):
        with pytest.raises(InvalidOption):
            columns(bad, default_priority=0, delay=None)
    with pytest.raises(InvalidOption, match="delay"):
        columns({}, default_priority=0, delay=-1)


def test_deadline_forms() -> None:
    assert deadline_of("2030-01-02T03:04:05+00:00") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert deadline_of(datetime(2030, 1, 1)) == datetime(2030, 1, 1, tzinfo=UTC)
    assert deadline_of(None) is None
    with pytest.raises(InvalidOption):
        deadline_of("soon")
    with pytest.raises(InvalidOption):
        deadline_of([1])


def test_every_named_query_loads() -> None:
    names = queries()
    assert {"dequeue", "ack", "retry", "nack", "reclaim_expired", "insert_messages"} <= set(names)
    assert "FOR UPDATE SKIP LOCKED" in q("dequeue")
    with pytest.raises(KeyError, match="no query named"):
        q("nope")


def test_migrations_are_numbered_and_unique() -> None:
    found = migrate.load_migrations()
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].version == 1


def test_rebuild_exception() -> None:
    exc = rebuild_exception("builtins.ValueError", "bad")
    assert isinstance(exc, ValueError) and str(exc) == "bad"
    assert isinstance(rebuild_exception("no.such.Module", "x"), DeadLettered)
    assert isinstance(rebuild_exception("os.path", "x"), DeadLettered)


def test_parse_duration() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("2h") == 7200
    assert parse_duration("1.5d") == 1.5 * 86400
    assert parse_duration(None) is None
    with pytest.raises(typer.BadParameter):
        parse_duration("ten minutes")


def test_config_file_with_top_level_keys_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_tasks.config import Settings

    path = tmp_path / "neuron_tasks.toml"
    path.write_text("batch_size = 7\n")
    monkeypatch.setenv("NEURON_TASKS_CONFIG", str(path))
    assert Settings().batch_size == 7
    path.write_text("batch_size = 7\n[neuron_tasks]\nbatch_size = 9\n")
    assert Settings().batch_size == 9  # the [neuron_tasks] table wins over top-level keys


def test_token_budgets_are_live_settings_and_tokens_are_secret() -> None:
    from neuron_tasks.core import runtime

    defs = runtime.definitions()
    assert defs["default_tenant_tokens_per_minute"].live and not defs["default_tenant_tokens_per_minute"].secret
    assert defs["dashboard_token"].secret and not defs["dashboard_token"].live


def test_decode_refuses_args_that_are_not_a_list() -> None:
    import json

    from dramatiq.errors import DecodeError

    from neuron_tasks.core.consumer import decode

    fields = {"queue_name": "q", "actor_name": "a", "kwargs": {}, "options": {}, "message_id": "m",
              "message_timestamp": 1}
    assert decode(json.dumps({**fields, "args": [1, 2]}).encode()).args == (1, 2)
    with pytest.raises(DecodeError, match="args must be a list"):
        decode(json.dumps({**fields, "args": {"x": 1}}).encode())  # Message.decode would run it as a('x')
    with pytest.raises(DecodeError):
        decode(b"[1, 2]")
