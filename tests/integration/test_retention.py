"""Retention on a real database: the scheduler's retention tick runs every Retention that a part
declares (neuron_tasks.core.parts), in the fire's transaction; each deletes old rows and keeps
young ones, and the tick's note lists `table=rows` for the fire log.

Rows are written directly with SQL, "old" well past the longest retention in effect (defaults,
environment and runtime settings included), "young" from just now.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from neuron_tasks.core import runtime
from neuron_tasks.core.parts import parts
from neuron_tasks.scheduler.node import builtin
from neuron_tasks.testing import truncate

RETENTION_TICK = "neuron_tasks.scheduler.maintenance:retention"
Conn = psycopg.Connection[Any]


def setting(conn: Conn, key: str) -> Any:
    """A setting's value in effect on this database (runtime value over environment over default)."""
    d = runtime.definitions()[key]
    return getattr(runtime.effective(d.owner(), runtime.runtime_values(conn)), key)


def old_age_s(conn: Conn) -> int:
    """Twice the longest retention of any table here, plus three days."""
    longest = max(setting(conn, "history_retention_s"), setting(conn, "dead_letter_retention_s"),
                  setting(conn, "llm_usage_retention_s"), setting(conn, "scheduler_fire_retention_s"),
                  7 * setting(conn, "vectors_metrics_retention_s"))
    return 2 * int(longest) + 3 * 86400


# -- one seeder per table: writes old and young rows, returns (rows expected deleted, left) --
def seed_history(conn: Conn, old: int) -> tuple[int, int]:
    conn.execute(
        """INSERT INTO neuron_tasks.messages_history (id, message_id, queue_name, actor_name, priority, attempts,
               retries, enqueued_at, finished_at)
           SELECT i, 'h' || i, 'ret', 'job', 0, 1, 0, f - interval '1 second', f
           FROM (VALUES (1, now() - %(old)s * interval '1 second'), (2, now() - %(old)s * interval '1 second'),
                        (3, now())) AS v(i, f)""", {"old": old})
    return 2, 1


def seed_dead_letters(conn: Conn, old: int) -> tuple[int, int]:
    # Old and young dead letters, and an old message still pending (never a dead letter: kept).
    conn.execute(
        """INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, state, payload, enqueued_at,
               failed_at, eta)
           VALUES ('dead-old', 'ret', 'job', 'failed', '\\x00', now() - %(old)s * interval '1 second',
                   now() - %(old)s * interval '1 second', now()),
                  ('dead-young', 'ret', 'job', 'failed', '\\x00', now(), now(), now()),
                  ('pending-old', 'ret', 'job', 'pending', '\\x00', now() - %(old)s * interval '1 second', NULL,
                   now() + interval '1 day')""", {"old": old})
    return 1, 2


def seed_tenant_usage(conn: Conn, old: int) -> tuple[int, int]:
    conn.execute(
        """INSERT INTO neuron_tasks.tenant_usage (tenant, minute, tokens, jobs)
           VALUES ('acme', date_trunc('minute', now() - interval '3 days'), 10, 1),
                  ('acme', date_trunc('minute', now() - interval '47 hours'), 10, 1),
                  ('acme', date_trunc('minute', now()), 10, 1)""")
    return 1, 2


def seed_llm_usage(conn: Conn, old: int) -> tuple[int, int]:
    # Charged and old: deleted. Old with no tenant (nothing to charge): deleted. Uncharged and old
    # (not yet counted against its tenant): kept.
    conn.execute(
        """INSERT INTO neuron_tasks.llm_usage (tenant, tokens, operation, at, charged_at)
           VALUES ('acme', 5, 'embed', now() - %(old)s * interval '1 second', now() - %(old)s * interval '1 second'),
                  (NULL, 5, 'embed', now() - %(old)s * interval '1 second', NULL),
                  ('acme', 5, 'embed', now() - %(old)s * interval '1 second', NULL),
                  ('acme', 5, 'embed', now(), now())""", {"old": old})
    return 2, 2


def seed_fires(conn: Conn, old: int) -> tuple[int, int]:
    node = uuid.uuid4()
    conn.execute(
        """INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, fired_at, node_id, note)
           VALUES ('ret', now() - %(old)s * interval '1 second', now() - %(old)s * interval '1 second', %(node)s, 'x'),
                  ('ret', now(), now(), %(node)s, 'x')""", {"old": old, "node": node})
    return 1, 1


def seed_nodes(conn: Conn, old: int) -> tuple[int, int]:
    conn.execute(
        """INSERT INTO neuron_tasks.scheduler_nodes (node_id, host, pid, heartbeat_at, stopped_at)
           VALUES (%s, 'h', 1, now() - interval '2 days', now() - interval '2 days'), (%s, 'h', 2, now(), NULL)""",
        (uuid.uuid4(), uuid.uuid4()))
    return 1, 1


def seed_vector_queries(conn: Conn, old: int) -> tuple[int, int]:
    conn.execute(
        """INSERT INTO neuron_tasks.vector_queries (query_id, index_name, at, k, ef, latency_ms)
           VALUES (gen_random_uuid(), 'ret', now() - %(old)s * interval '1 second', 10, 40, 1.0),
                  (gen_random_uuid(), 'ret', now(), 10, 40, 1.0)""", {"old": old})
    return 1, 1


def seed_samples(conn: Conn, old: int) -> tuple[int, int]:
    # The newest `vectors_sample_size` samples of an index stay; older ones go unless they have
    # feedback. Here: keep + 2 without feedback, and the very oldest with (young) feedback.
    keep = int(setting(conn, "vectors_sample_size"))
    conn.execute(
        """INSERT INTO neuron_tasks.vector_query_samples (query_id, index_name, at, k, ef, embedding, result_ids)
           SELECT gen_random_uuid(), 'ret', now() - i * interval '1 second', 10, 40, '\\x00', '{}'
           FROM generate_series(1, %(n)s) AS i""", {"n": keep + 2})
    kept = uuid.uuid4()
    conn.execute(
        """INSERT INTO neuron_tasks.vector_query_samples (query_id, index_name, at, k, ef, embedding, result_ids)
           VALUES (%(id)s, 'ret', now() - %(old)s * interval '1 second', 10, 40, '\\x00', '{}')""",
        {"id": kept, "old": old})
    conn.execute("INSERT INTO neuron_tasks.vector_feedback (query_id, index_name, relevant_ids, at) "
                 "VALUES (%s, 'ret', '{1}', now())", (kept,))
    return 2, keep + 1


def seed_feedback(conn: Conn, old: int) -> tuple[int, int]:
    # One more old row (its query long gone); the young one of seed_samples is kept. Expected
    # counts include that one when both tables are trimmed (see test below).
    conn.execute("INSERT INTO neuron_tasks.vector_feedback (query_id, index_name, relevant_ids, at) "
                 "VALUES (gen_random_uuid(), 'ret', '{1}', now() - %(old)s * interval '1 second')", {"old": old})
    return 1, 0


SEEDERS: dict[str, Callable[[Conn, int], tuple[int, int]]] = {
    "neuron_tasks.messages_history": seed_history,
    "neuron_tasks.messages": seed_dead_letters,
    "neuron_tasks.tenant_usage": seed_tenant_usage,
    "neuron_tasks.llm_usage": seed_llm_usage,
    "neuron_tasks.scheduler_fires": seed_fires,
    "neuron_tasks.scheduler_nodes": seed_nodes,
    "neuron_tasks.vector_queries": seed_vector_queries,
    "neuron_tasks.vector_query_samples": seed_samples,
    "neuron_tasks.vector_feedback": seed_feedback,
}
# Rows of a table written by another table's seeder (the feedback that keeps a sample).
ALSO_KEPT = {"neuron_tasks.vector_feedback": 1}

ALL_PART_NAMES = [p.name for p in parts()]


@pytest.fixture
def rdb(clean_db: str) -> Iterator[str]:
    truncate(clean_db, *ALL_PART_NAMES)
    yield clean_db
    truncate(clean_db, *ALL_PART_NAMES)


def count(conn: Conn, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def declared_retention() -> list[str]:
    return [r.table for part in parts() for r in part.retention]


def test_every_retention_has_a_case_here() -> None:
    tables = declared_retention()
    assert len(tables) == len(set(tables)), f"a table is trimmed twice: {tables}"
    missing = set(tables) - set(SEEDERS)
    assert not missing, f"retention without a case in tests/integration/test_retention.py: {missing}"
    assert {"neuron_tasks.messages_history", "neuron_tasks.messages", "neuron_tasks.tenant_usage",
            "neuron_tasks.llm_usage", "neuron_tasks.scheduler_fires", "neuron_tasks.vector_queries"} <= set(tables)


def test_declared_tables_exist_after_migrations(database_url: str) -> None:
    """No part declares a table (retention, its tables, a tick's requirement) that is not there."""
    names = {r.table for part in parts() for r in part.retention}
    names |= {t for part in parts() for t in part.tables}
    names |= {t.requires for part in parts() for t in part.ticks if t.requires}
    names |= {t for part in parts() for page in part.pages for t in page.tables}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NULL",
                            (sorted(names),)).fetchall()
    assert not rows, f"declared but not created by the migrations: {[r[0] for r in rows]}"


def test_retention_tick_trims_old_rows_and_keeps_young_ones(rdb: str) -> None:
    with psycopg.connect(rdb, autocommit=True) as conn:
        old = old_age_s(conn)
        expected: dict[str, tuple[int, int]] = {}
        for table in declared_retention():
            deleted, left = SEEDERS[table](conn, old)
            expected[table] = (deleted, left)
        expected = {t: (d, left + ALSO_KEPT.get(t, 0)) for t, (d, left) in expected.items()}
        before = {t: count(conn, t) for t in expected}
        assert all(before[t] == d + left for t, (d, left) in expected.items()), before

    with psycopg.connect(rdb) as conn:
        with conn.transaction():
            note = builtin(conn, RETENTION_TICK)
            inside = {t: count(conn, t) for t in expected}
        after = {t: count(conn, t) for t in expected}

    reported = dict(item.split("=", 1) for item in note.split())
    assert reported == {t.removeprefix("neuron_tasks."): str(d) for t, (d, _) in expected.items()}, note
    assert inside == after == {t: left for t, (_, left) in expected.items()}


def test_llm_usage_keeps_uncharged_rows_whatever_their_age(rdb: str) -> None:
    with psycopg.connect(rdb, autocommit=True) as conn:
        old = old_age_s(conn)
        seed_llm_usage(conn, old)
        with conn.transaction():
            note = builtin(conn, RETENTION_TICK)
        rows = conn.execute("SELECT charged_at IS NULL, at < now() - interval '1 day' FROM neuron_tasks.llm_usage "
                            "ORDER BY 1, 2").fetchall()
    assert "llm_usage=2" in note.split()
    assert rows == [(False, False), (True, True)]


def test_a_second_tick_finds_nothing_more(rdb: str) -> None:
    with psycopg.connect(rdb, autocommit=True) as conn:
        old = old_age_s(conn)
        for table in declared_retention():
            SEEDERS[table](conn, old)
        with conn.transaction():
            builtin(conn, RETENTION_TICK)
        with conn.transaction():
            note = builtin(conn, RETENTION_TICK)
    assert {item.split("=", 1)[1] for item in note.split()} == {"0"}, note
