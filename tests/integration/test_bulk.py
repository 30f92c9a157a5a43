"""Bulk enqueue: a binary COPY when no message needs the server's judgement, one INSERT with
ON CONFLICT for unique jobs and delays; counts and NOTIFY stay right either way."""

from __future__ import annotations

from typing import Any

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker, QueueFull, Settings
from neuron_tasks.errors import DuplicateJob, InvalidOption, MessageTooLarge, UnknownTopic


def rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def test_bulk_copy_keeps_every_message_in_order(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    seen: list[int] = []

    @dramatiq.actor(queue_name="bulk")
    def job(i: int) -> None:
        seen.append(i)

    messages = [job.message_with_options(args=(i,), priority=i % 3, tenant="t1" if i % 2 else None)
                for i in range(2000)]
    out = broker.enqueue_many(messages)
    assert [m.message_id for m in out] == [m.message_id for m in messages]
    broker.join("bulk", timeout=60_000)
    assert sorted(seen) == list(range(2000))
    assert rows(broker.url, "SELECT count(*), count(DISTINCT message_id) FROM neuron_tasks.messages_history") \
        == [(2000, 2000)]


def test_bulk_copy_stores_the_columns(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="bulk")
    def job(i: int) -> None: ...

    messages = [job.message_with_options(args=(i,), priority=i, tenant=f"t{i}", deadline=4_000_000_000_000)
                for i in range(3)]
    broker.enqueue_many(messages)
    stored = rows(broker.url, "SELECT message_id, priority, tenant, extract(epoch FROM deadline)::bigint, state, "
                              "eta <= now(), payload FROM neuron_tasks.messages ORDER BY id")
    assert [r[:6] for r in stored] == [(m.message_id, i, f"t{i}", 4_000_000_000, "pending", True)
                                       for i, m in enumerate(messages)]
    assert [dramatiq.Message.decode(bytes(r[6])).args for r in stored] == [(0,), (1,), (2,)]
    assert rows(broker.url, "SELECT sum(n) FROM neuron_tasks.queue_counters WHERE queue_name = 'bulk'") == [(3,)]


def test_bulk_with_unique_jobs_and_delays(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="bulk")
    def job(i: int) -> None: ...

    live = job.send_with_options(args=(0,), unique_key="a")
    batch = [job.message_with_options(args=(1,), unique_key="a", on_duplicate="existing"),
             job.message_with_options(args=(2,), unique_key="b"),
             job.message(3)]
    out = broker.enqueue_many(batch, delay=60_000)
    assert out[0].message_id == live.message_id
    assert [m.message_id for m in out[1:]] == [m.message_id for m in batch[1:]]
    assert rows(broker.url, "SELECT count(*) FILTER (WHERE eta > now() + interval '50 seconds') "
                            "FROM neuron_tasks.messages") == [(2,)]
    with pytest.raises(DuplicateJob):
        broker.enqueue_many([job.message(4), job.message_with_options(args=(5,), unique_key="b")])
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages") == [(3,)], "nothing half-enqueued"


def test_bulk_wakes_a_listening_consumer(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="woken")
    def job(i: int) -> None: ...

    with psycopg.connect(broker.url, autocommit=True) as listener:
        listener.execute("LISTEN neuron_tasks")
        broker.enqueue_many([job.message(i) for i in range(100)])  # COPY
        got = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
        assert got == ["woken"]
        broker.enqueue_many([job.message_with_options(args=(1,), unique_key="x")])  # INSERT
        got = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
        assert got == ["woken"]


def test_bulk_respects_the_depth(settings: Settings) -> None:
    broker = PostgresBroker(settings=settings.model_copy(update={"queue_depth": 100}))
    dramatiq.set_broker(broker)
    try:

        @dramatiq.actor(queue_name="deep")
        def job(i: int) -> None: ...

        broker.enqueue_many([job.message(i) for i in range(100)])
        with pytest.raises(QueueFull):
            broker.enqueue_many([job.message(1)])
        with psycopg.connect(broker.url) as conn, pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            conn.execute("SET neuron_tasks.queue_depth = 100")
            conn.execute("SELECT neuron_tasks.enqueue('deep', 'job', '[9]')")
        assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages") == [(100,)]
    finally:
        broker.close()


def test_bulk_checks_every_message_of_a_mixed_batch(broker: PostgresBroker) -> None:
    """What a batch shares (actors, queues, settings) is worked out once, but each message is still
    checked on its own: one bad message anywhere refuses the whole batch, and a good batch is stored
    as each message alone would be."""

    @dramatiq.actor(queue_name="bulk_a", priority=7, tenant="owner")
    def first(i: int) -> None: ...

    @dramatiq.actor(queue_name="bulk_b")
    def second(i: Any) -> None: ...

    def good() -> list[dramatiq.Message[Any]]:
        return [first.message(1), second.message(2), first.message_with_options(args=(3,), priority=1),
                second.message_with_options(args=(4,), tenant="t4", deadline=4_000_000_000_000),
                first.message(5), second.message(6)]

    cyclic: list[Any] = []
    cyclic.append(cyclic)
    bad: list[tuple[dramatiq.Message[Any], type[Exception]]] = [
        (second.message_with_options(args=(9,), priority="high"), InvalidOption),
        (second.message_with_options(args=(9,), tenant="no spaces"), InvalidOption),
        (second.message_with_options(args=(9,), topic="not_declared"), UnknownTopic),
        (second.message(float("nan")), InvalidOption),
        (second.message(cyclic), InvalidOption),
        (second.message("x" * (broker.settings.max_message_bytes + 1)), MessageTooLarge),
        (second.message(9).copy(queue_name="bad queue"), InvalidOption),
        (first.message(9).copy(actor_name=""), InvalidOption),
    ]
    for message, error in bad:
        with pytest.raises(error):
            broker.enqueue_many([*good(), message, *good()])
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages") == [(0,)]

    messages = good()
    broker.enqueue_many(messages)
    stored = rows(broker.url, "SELECT queue_name, actor_name, priority, tenant, deadline IS NOT NULL, payload "
                              "FROM neuron_tasks.messages ORDER BY id")
    assert [r[:5] for r in stored] == [
        ("bulk_a", "first", 7, "owner", False), ("bulk_b", "second", 0, None, False),
        ("bulk_a", "first", 1, "owner", False), ("bulk_b", "second", 0, "t4", True),
        ("bulk_a", "first", 7, "owner", False), ("bulk_b", "second", 0, None, False)]
    # The bytes are those Dramatiq's encoder writes for the message as checked (actor defaults merged).
    for message, row in zip(messages, stored, strict=True):
        decoded = dramatiq.Message.decode(bytes(row[5]))
        assert bytes(row[5]) == decoded.encode()
        assert decoded.message_id == message.message_id and decoded.args == message.args
