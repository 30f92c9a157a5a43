"""Actors of the outage and ack fault tests (queue "faults").

`record` notes one run in public.test_runs, like fault_actors.record. The patient actors survive
a PostgreSQL outage: they write their marks in public.outage_runs (created by the tests) with a
token per run, retrying until the server answers, so a run whose commit reply was lost in the
outage is still counted once. The tests enqueue them by name and never import this module.
"""

from __future__ import annotations

import os
import time
import uuid

import dramatiq
import psycopg

from neuron_tasks import PostgresBroker
from neuron_tasks.errors import DatabaseUnavailable

QUEUE = "faults"
PATIENCE_S = 120.0


def _broker() -> PostgresBroker:
    broker = dramatiq.get_broker()
    assert isinstance(broker, PostgresBroker), f"unexpected broker {broker!r}"
    return broker


@dramatiq.actor(queue_name=QUEUE, max_retries=5)  # a few deaths of its worker do not make it poison
def record(key: str) -> None:
    with _broker().pool.connection() as conn:
        conn.execute("INSERT INTO public.test_runs (key, pid) VALUES (%s, %s)", (key, os.getpid()))


def mark(key: str) -> None:
    """One row in public.outage_runs for this run, written once however long the server is away."""
    token = uuid.uuid4()
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            with _broker().pool.connection(timeout=2.0) as conn:
                conn.execute("INSERT INTO public.outage_runs (token, key, pid) VALUES (%s, %s, %s)"
                             " ON CONFLICT (token) DO NOTHING", (token, key, os.getpid()))
            return
        except (psycopg.OperationalError, DatabaseUnavailable):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=600_000)
def patient_sleepy(key: str, seconds: float) -> None:
    """start:KEY, a sleep, done:KEY; each mark waits out an outage."""
    mark(f"start:{key}")
    time.sleep(seconds)
    mark(f"done:{key}")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=600_000)
def patient_record(key: str) -> None:
    mark(key)
