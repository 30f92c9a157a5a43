"""Actors of the fault tests (queue "faults"); each records its runs in public.test_runs.

The tests enqueue them by name through SQL and never import this module themselves."""

from __future__ import annotations

import os
import signal
import time

import dramatiq

from neuron_tasks import PostgresBroker

QUEUE = "faults"


def record_run(key: str) -> None:
    broker = dramatiq.get_broker()
    assert isinstance(broker, PostgresBroker), f"unexpected broker {broker!r}"
    with broker.pool.connection() as conn:
        conn.execute("INSERT INTO public.test_runs (key, pid) VALUES (%s, %s)", (key, os.getpid()))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def record(key: str) -> None:
    record_run(key)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def sleepy(key: str, seconds: float) -> None:
    """start:KEY, an interruptible sleep, done:KEY."""
    record_run(f"start:{key}")
    time.sleep(seconds)
    record_run(f"done:{key}")


def _hold_gil(seconds: float) -> None:
    """Hold the GIL for about `seconds` without a break: one C call (sum over a range) that never
    returns to the interpreter loop, so no other thread of the process runs meanwhile."""
    n = 2_000_000
    t0 = time.perf_counter()
    sum(range(n))
    per_item = max((time.perf_counter() - t0) / n, 1e-9)
    sum(range(int(seconds / per_item)))


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=3_600_000)
def hog_gil(key: str, seconds: float) -> None:
    """start:KEY, one C call that holds the GIL for `seconds`, done:KEY."""
    record_run(f"start:{key}")
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0.05:
        _hold_gil(left)
    record_run(f"done:{key}")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=1000)
def blocked_in_c(key: str) -> None:
    """start:KEY, then a sleep inside C that Dramatiq's time limit cannot interrupt."""
    record_run(f"start:{key}")
    time.sleep(1e6)
    record_run(f"done:{key}")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def kill_worker(key: str) -> None:
    """Records start:KEY, then kills its own worker process with SIGKILL."""
    record_run(f"start:{key}")
    os.kill(os.getpid(), signal.SIGKILL)


@dramatiq.actor(queue_name=QUEUE, max_retries=1)
def kill_worker_once_retry(key: str) -> None:
    """max_retries=1 on the actor: its worker deaths count against 1, not the global default."""
    record_run(f"start:{key}")
    os.kill(os.getpid(), signal.SIGKILL)
