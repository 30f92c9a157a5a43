"""The scale benchmark's jobs (queue "scale"): a no-op and a 10 ms I/O wait."""

from __future__ import annotations

import time

import dramatiq

QUEUE = "scale"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(n: int) -> None:
    """Does nothing: the queue's own cost per message."""


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def io_10ms(n: int) -> None:
    """Waits 10 ms without the CPU, as a call to another service would."""
    time.sleep(0.01)


@dramatiq.actor(queue_name=QUEUE, max_retries=20, min_backoff=100, max_backoff=1000)
def recorded(key: str) -> None:
    """Waits 10 ms, then records its run in public.scale_runs (the failover benchmark counts them);
    retried when that write fails (the primary went away)."""
    from neuron_tasks import PostgresBroker

    time.sleep(0.01)
    broker = dramatiq.get_broker()
    assert isinstance(broker, PostgresBroker)
    with broker.pool.connection() as conn:
        conn.execute("INSERT INTO public.scale_runs (key) VALUES (%s)", (key,))
