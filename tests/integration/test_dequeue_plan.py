"""The consumer's hot statements use their partial indexes on a table of realistic size.

`dequeue` (the claim: a skip scan over tenants, then each tenant's ready messages) must read
messages through messages_ready_idx; `next_eta` (when is the next message of a queue due) through
messages_eta_idx or messages_ready_idx. Neither may scan the whole messages table, which holds
running messages and dead letters besides the ready ones.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from neuron_tasks.sql import q
from neuron_tasks.testing import truncate

ROWS = 20_000
QUEUES = 5

# Rows in 5 queues, 23 tenants and no tenant; states 40% pending (1 in 7 delayed by an hour),
# 10% retrying, 20% running, 30% dead letters.
FILL = """
INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, state, priority, eta, tenant, payload,
                                   failed_at, lease_owner, lease_expires_at)
SELECT md5(i::text), 'plan' || (i %% %(queues)s), 'job', s.state, i %% 3,
       CASE WHEN i %% 7 = 0 THEN now() + interval '1 hour' ELSE now() - (i %% 600) * interval '1 second' END,
       CASE WHEN i %% 4 = 0 THEN NULL ELSE 't' || (i %% 23) END,
       '\\x00'::bytea,
       CASE WHEN s.state = 'failed' THEN now() - (i %% 1000) * interval '1 minute' END,
       CASE WHEN s.state = 'running' THEN gen_random_uuid() END,
       CASE WHEN s.state = 'running' THEN now() + interval '30 seconds' END
FROM generate_series(1, %(rows)s) AS i
CROSS JOIN LATERAL (SELECT (ARRAY['pending', 'pending', 'pending', 'pending', 'retrying', 'running', 'running',
                                  'failed', 'failed', 'failed'])[1 + i %% 10] AS state) AS s
"""

# Partial indexes on messages (schema/001_messages.sql, 002_semantics.sql) that serve each statement.
READY = "messages_ready_idx"
ETA = "messages_eta_idx"
# The claim's final UPDATE joins the picked ids back to messages by primary key.
DEQUEUE_MAY_USE = {READY, ETA, "messages_pkey"}
NEXT_ETA_MAY_USE = {READY, ETA}


@pytest.fixture
def full_queue(clean_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(FILL, {"rows": ROWS, "queues": QUEUES})
        conn.execute("ANALYZE neuron_tasks.messages")
        yield conn
        truncate(conn, "queue")


def plan_nodes(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of the plan of named statement `name` run with `params`."""
    row = conn.execute("EXPLAIN (FORMAT JSON) " + q(name), params).fetchone()
    assert row is not None
    doc = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    nodes: list[dict[str, Any]] = []
    todo = [doc[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


def message_indexes(nodes: list[dict[str, Any]]) -> set[str]:
    """The indexes of neuron_tasks.messages the plan reads."""
    return {n["Index Name"] for n in nodes if str(n.get("Index Name", "")).startswith("messages_")}


def seq_scans_of_messages(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in nodes if n.get("Node Type") == "Seq Scan" and n.get("Relation Name") == "messages"]


def test_the_fill_looks_like_a_busy_queue(full_queue: psycopg.Connection[Any]) -> None:
    counts = dict(full_queue.execute("SELECT state, count(*) FROM neuron_tasks.messages GROUP BY state").fetchall())
    assert counts == {"pending": 8000, "retrying": 2000, "running": 4000, "failed": 6000}
    tenants = full_queue.execute("SELECT count(DISTINCT coalesce(tenant, '')) FROM neuron_tasks.messages").fetchone()
    assert tenants == (24,)


@pytest.mark.parametrize("queue", ["plan1", "an-empty-queue"])
@pytest.mark.parametrize("limit", [1, 10, 100])
def test_dequeue_claims_through_the_ready_index(full_queue: psycopg.Connection[Any], queue: str, limit: int) -> None:
    params = {"queue_name": queue, "owner": uuid.uuid4(), "lease_s": 30.0, "limit": limit}
    nodes = plan_nodes(full_queue, "dequeue", params)
    used = message_indexes(nodes)
    assert not seq_scans_of_messages(nodes), f"dequeue scans all of messages: {used}"
    assert READY in used, f"dequeue does not read {READY}: {used}"
    assert used <= DEQUEUE_MAY_USE, f"dequeue reads unexpected indexes: {used - DEQUEUE_MAY_USE}"


@pytest.mark.parametrize("queue", ["plan1", "an-empty-queue"])
def test_next_eta_reads_a_partial_index(full_queue: psycopg.Connection[Any], queue: str) -> None:
    nodes = plan_nodes(full_queue, "next_eta", {"queue_name": queue})
    used = message_indexes(nodes)
    assert not seq_scans_of_messages(nodes), f"next_eta scans all of messages: {used}"
    assert used & NEXT_ETA_MAY_USE, f"next_eta reads none of {sorted(NEXT_ETA_MAY_USE)}: {used}"
    assert used <= NEXT_ETA_MAY_USE, f"next_eta reads unexpected indexes: {used - NEXT_ETA_MAY_USE}"


def test_the_statements_still_answer_on_the_fill(full_queue: psycopg.Connection[Any]) -> None:
    """The plans above are of statements that work: next_eta sees a due message of plan1."""
    row = full_queue.execute(q("next_eta"), {"queue_name": "plan1"}).fetchone()
    assert row is not None and row[0] is not None and row[0] < 0, row
    assert full_queue.execute(q("next_eta"), {"queue_name": "an-empty-queue"}).fetchone() == (None, None)


def index_rows_read(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> int:
    """The most rows any index node of messages returned while running named statement `name`."""
    row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + q(name), params).fetchone()
    assert row is not None
    doc = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    todo, most = [doc[0]["Plan"]], 0
    while todo:
        node = todo.pop()
        if str(node.get("Index Name", "")).startswith("messages_"):
            most = max(most, int(node["Actual Rows"]))
        todo.extend(node.get("Plans", []))
    return most


def test_next_eta_reads_one_entry_when_the_statistics_are_stale(full_queue: psycopg.Connection[Any]) -> None:
    """A queue the statistics do not know of (filled after the last ANALYZE, as a burst is): the
    next due time is still one index entry, not a count of the whole queue."""
    full_queue.execute(FILL.replace("'plan' || (i %% %(queues)s)", "'burst'").replace("s.state, i", "'pending', i"),
                       {"rows": 5000, "queues": QUEUES})
    assert index_rows_read(full_queue, "next_eta", {"queue_name": "burst"}) <= 1
    row = full_queue.execute(q("next_eta"), {"queue_name": "burst"}).fetchone()
    assert row is not None and row[0] is not None and row[0] < 0, row
