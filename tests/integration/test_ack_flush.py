"""Acks are written without waiting for the WAL flush and made durable in groups. When the
completer's connection is lost before that flush (the server may have crashed and rolled those
acks back), it writes them again on its next connection: a job that finished is recorded as
finished, never left running under a live worker's lease nor run twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from neuron_tasks.core import completer
from neuron_tasks.core.consumer import PgMessageProxy


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_acks_lost_with_the_connection_are_written_again(broker: PostgresBroker,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(completer, "CONFIRM_EVERY_S", 30.0)  # no flush of its own during the test

    def job(i: int) -> None: ...

    actor = dramatiq.actor(broker=broker, actor_name="job", queue_name="flush")(job)
    broker.enqueue_many([actor.message(i) for i in range(4)])
    consumer = broker.consume("flush")
    claimed = [next(consumer) for _ in range(4)]
    assert all(isinstance(m, PgMessageProxy) for m in claimed)
    proxies = [m for m in claimed if isinstance(m, PgMessageProxy)]
    lost = [p.row_id for p in proxies[:3]]
    with psycopg.connect(broker.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.b_lost AS SELECT * FROM neuron_tasks.messages WHERE id = ANY(%s)", (lost,))
        for proxy in proxies[:3]:
            consumer.ack(proxy)
        wait_for(lambda: broker.completer.pending() == 0, "the acks written")
        assert conn.execute("SELECT count(*) FROM neuron_tasks.messages WHERE id = ANY(%s)", (lost,)).fetchone() == (0,)
        # What a crash of the server before the flush looks like: the acks are rolled back, the
        # rows are running again under this worker's lease, and every connection is gone.
        conn.execute("DELETE FROM neuron_tasks.messages_history WHERE id = ANY(%s)", (lost,))
        conn.execute("INSERT INTO neuron_tasks.messages OVERRIDING SYSTEM VALUE SELECT * FROM public.b_lost")
        conn.execute("DROP TABLE public.b_lost")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                     " AND application_name LIKE 'neuron_tasks%%'")
        consumer.ack(proxies[3])  # the next write finds the connection gone
        wait_for(lambda: broker.completer.pending() == 0 and broker.completer.replayed == 3,
                 "the lost acks written again", timeout=20)
        left = conn.execute("SELECT count(*) FROM neuron_tasks.messages WHERE queue_name = 'flush'").fetchone()
        finished = conn.execute("SELECT id FROM neuron_tasks.messages_history WHERE queue_name = 'flush'"
                                " ORDER BY id").fetchall()
    assert left == (0,)
    assert [r[0] for r in finished] == sorted(p.row_id for p in proxies)  # each recorded once
    assert sum(broker.completer.not_recorded.values()) == 0


def test_acks_are_flushed_while_idle(broker: PostgresBroker) -> None:
    """Nothing waits for a later result to make an ack durable: an idle completer flushes."""

    def job(i: int) -> None: ...

    actor = dramatiq.actor(broker=broker, actor_name="job", queue_name="flush")(job)
    broker.enqueue_many([actor.message(i) for i in range(2)])
    consumer = broker.consume("flush")
    for _ in range(2):
        message = next(consumer)
        assert message is not None
        consumer.ack(message)
    wait_for(lambda: broker.completer.pending() == 0, "the acks written")
    wait_for(lambda: not broker.completer.unflushed(), "the acks flushed", timeout=5)
