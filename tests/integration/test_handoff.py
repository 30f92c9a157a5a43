"""A topic slot freed by a job goes straight to a message of the same topic waiting in the same
worker process: the topic's concurrency limit is never exceeded, nothing is lost or run twice,
and no slot is left held once the queue is drained."""

from __future__ import annotations

import threading
import time
from collections import Counter

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from neuron_tasks.core.topics import set_topic


def start_worker(broker: PostgresBroker, threads: int) -> dramatiq.Worker:
    w = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    w.start()
    return w


@pytest.mark.parametrize("job_ms", [0, 10])
def test_hand_over_keeps_the_topic_limit_and_loses_nothing(broker: PostgresBroker, job_ms: int) -> None:
    concurrency, n = 3, 300
    set_topic(broker.pool, "narrow", concurrency=concurrency)
    lock = threading.Lock()
    running = peak = 0
    ran: Counter[int] = Counter()
    handed: list[int] = []
    original = broker.completer.hand_over

    def hand_over(old: int, new: int) -> None:
        handed.append(new)
        original(old, new)

    broker.completer.hand_over = hand_over  # type: ignore[method-assign]

    @dramatiq.actor(max_retries=0)
    def job(i: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            if job_ms:
                time.sleep(job_ms / 1000)
            else:
                time.sleep(0)  # let the other threads run
        finally:
            with lock:
                running -= 1
                ran[i] += 1

    @dramatiq.actor(max_retries=0)
    def free(i: int) -> None:
        ran[-1 - i] += 1

    broker.enqueue_many([job.message_with_options(args=(i,), topic="narrow") for i in range(n)])
    broker.enqueue_many([free.message(i) for i in range(50)])  # the same queue, no topic
    w = start_worker(broker, threads=8)
    try:
        broker.join(job.queue_name, timeout=60_000)
    finally:
        w.stop()
    with psycopg.connect(broker.url, autocommit=True) as conn:
        held = conn.execute("SELECT count(*) FROM neuron_tasks.topic_slots WHERE holder IS NOT NULL").fetchone()
        finished = conn.execute("SELECT count(*) FROM neuron_tasks.messages_history").fetchone()
        live = conn.execute("SELECT count(*) FROM neuron_tasks.messages").fetchone()
    print(f"job_ms={job_ms}: peak {peak} running of {concurrency}; {len(handed)} of {n} jobs took a slot handed over")
    assert peak <= concurrency
    assert sorted(k for k in ran if k >= 0) == list(range(n)) and all(ran[i] == 1 for i in range(n))
    assert sum(ran[k] for k in ran if k < 0) == 50
    assert finished == (n + 50,) and live == (0,)
    assert held == (0,)
    assert handed  # slots did go from job to job within the process



def test_acks_and_hand_overs_are_written_in_one_statement(broker: PostgresBroker) -> None:
    """The completer's write for a process holding topic slots: the finished messages leave the
    queue, a slot goes to the waiting message it was handed to, and a slot handed to a message
    that finished in the same write is given back rather than left with a finished holder."""
    from neuron_tasks.core.completer import Batch

    set_topic(broker.pool, "pair", concurrency=2)
    completer = broker.completer
    completer.slots_taken()
    with psycopg.connect(broker.url, autocommit=True) as conn:
        ids = [row[0] for row in conn.execute(
            "INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload, state, topic, "
            "lease_owner, lease_expires_at, started_at) "
            "SELECT 'm' || i, 'default', 'job', '\\x7b7d'::bytea, 'running', 'pair', %s, now() + interval '1 minute', "
            "now() FROM generate_series(1, 5) AS i ORDER BY i RETURNING id", (completer.owner,))]
        a, b, c, d, e = ids

        def holders() -> list[int | None]:
            return [r[0] for r in conn.execute("SELECT holder FROM neuron_tasks.topic_slots WHERE topic = 'pair' "
                                               "ORDER BY slot")]

        def finished() -> set[int]:
            return {r[0] for r in conn.execute("SELECT id FROM neuron_tasks.messages_history")}

        conn.execute("UPDATE neuron_tasks.topic_slots SET holder = CASE slot WHEN 1 THEN %s ELSE %s END "
                     "WHERE topic = 'pair'", (a, c))
        # a hands its slot to b, which finishes in the same write: the slot is free again.
        assert completer._write(Batch(acks=[a, b], handoffs=[(a, b)])) == []
        assert holders() == [None, c] and finished() == {a, b}
        # c hands its slot to d (still running): d holds it; c is finished.
        assert completer._write(Batch(acks=[c], handoffs=[(c, d)])) == []
        assert holders() == [None, d] and finished() == {a, b, c}
        # A hand-over from a message that holds no slot moves nothing; e's ack is still written.
        assert completer._write(Batch(acks=[e], handoffs=[(a, e)])) == []
        assert holders() == [None, d] and finished() == {a, b, c, e}
        # An ack for a row no longer this worker's is returned as not recorded.
        assert completer._write(Batch(acks=[a])) == [a]
