"""neuron_tasks.testing.truncate: empties the tables of the named parts, and only those."""

from __future__ import annotations

import psycopg
import pytest

from neuron_tasks.core.parts import parts
from neuron_tasks.testing import truncate
from neuron_tasks.testing.tables import _truncate, part_tables


def counts(url: str, *tables: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # type: ignore[index]


def test_truncates_the_named_parts_only(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.llm_usage (tenant, tokens) VALUES ('a', 1), ('b', 2)")
        conn.execute("INSERT INTO neuron_tasks.tenant_usage (tenant, minute) VALUES ('a', now())")
    emptied = truncate(clean_db, "llm")
    assert emptied == list(next(p for p in parts() if p.name == "llm").tables)
    assert counts(clean_db, "neuron_tasks.llm_usage", "neuron_tasks.tenant_usage") == {
        "neuron_tasks.llm_usage": 0, "neuron_tasks.tenant_usage": 1}

    # RESTART IDENTITY: ids start again.
    with psycopg.connect(clean_db, autocommit=True) as conn:
        row = conn.execute("INSERT INTO neuron_tasks.llm_usage (tenant, tokens) VALUES ('c', 3) RETURNING id")
        assert row.fetchone() == (1,)
        truncate(conn, "queue", "llm")
    assert counts(clean_db, "neuron_tasks.llm_usage", "neuron_tasks.tenant_usage") == {
        "neuron_tasks.llm_usage": 0, "neuron_tasks.tenant_usage": 0}


def test_no_name_means_every_part_and_unknown_names_are_refused() -> None:
    every = part_tables()
    assert set(every) == {t for p in parts() for t in p.tables}
    assert len(every) == len(set(every))
    with pytest.raises(ValueError, match="no part named 'nope'"):
        part_tables("queue", "nope")


def test_tables_not_in_the_database_are_skipped(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.llm_usage (tenant, tokens) VALUES ('a', 1)")
        done = _truncate(conn, ["neuron_tasks.not_migrated_yet", "neuron_tasks.llm_usage"])
    assert done == ["neuron_tasks.llm_usage"]
    assert counts(clean_db, "neuron_tasks.llm_usage") == {"neuron_tasks.llm_usage": 0}
