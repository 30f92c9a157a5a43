"""A delayed or retried message runs once its time has come, never before (judged by the
server's clock against the row's eta), and is picked up promptly after it."""

from __future__ import annotations

import statistics
import threading

import dramatiq
from dramatiq.errors import Retry
from dramatiq.middleware import CurrentMessage

from neuron_tasks import PostgresBroker
from neuron_tasks.core.consumer import PgMessageProxy


def lateness_s(broker: PostgresBroker, row_id: int) -> float:
    """Seconds between the message's eta and now, by the server's clock (negative: early)."""
    with broker.pool.connection() as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp() - eta)::float8 FROM neuron_tasks.messages"
                           " WHERE id = %s", (row_id,)).fetchone()
    assert row is not None
    return float(row[0])


def test_a_retried_message_runs_after_its_delay_and_not_before(broker: PostgresBroker,
                                                               worker: dramatiq.Worker) -> None:
    late: list[float] = []
    done = threading.Event()
    rounds = 8

    @dramatiq.actor(max_retries=3)
    def flaky(i: int) -> None:
        message = CurrentMessage.get_current_message()
        assert isinstance(message, PgMessageProxy)
        if message.attempt == 1:
            raise Retry(f"try {i} again", delay=100)
        late.append(lateness_s(broker, message.row_id))
        if len(late) == rounds:
            done.set()

    for i in range(rounds):  # one at a time, so that each is alone in the queue when it is due
        before = len(late)
        flaky.send(i)
        broker.join(flaky.queue_name, timeout=10_000)
        assert len(late) == before + 1
    assert done.is_set()
    print(f"retried messages ran {statistics.median(late) * 1000:.1f} ms (median) after their eta; "
          f"range {min(late) * 1000:.1f}-{max(late) * 1000:.1f} ms")
    assert all(s >= 0 for s in late), late  # never before its eta


def test_a_delayed_message_runs_after_its_delay(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    late: list[float] = []

    @dramatiq.actor
    def later() -> None:
        message = CurrentMessage.get_current_message()
        assert isinstance(message, PgMessageProxy)
        late.append(lateness_s(broker, message.row_id))

    for delay in (30, 80, 150):
        later.send_with_options(delay=delay)
        broker.join(later.queue_name, timeout=10_000)
    print("delayed messages ran " + ", ".join(f"{s * 1000:.1f}" for s in late) + " ms after their eta")
    assert len(late) == 3 and all(s >= 0 for s in late), late
