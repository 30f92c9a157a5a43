"""Actors run by the multi-process tests (tests/integration/test_processes.py).

Each run records itself in public.test_runs (key, pid of the worker process) through the
worker's own broker pool, so the tests can see what ran, how often and where.
The tests enqueue these by name (queue QUEUE), without importing this module.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import dramatiq

from neuron_tasks import PostgresBroker

QUEUE = "mp"


def record_run(key: str) -> None:
    """Insert (key, this process's pid) into public.test_runs (autocommit)."""
    broker = dramatiq.get_broker()
    assert isinstance(broker, PostgresBroker), f"unexpected broker {broker!r}"
    with broker.pool.connection() as conn:
        conn.execute("INSERT INTO public.test_runs (key, pid) VALUES (%s, %s)", (key, os.getpid()))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def record(key: str) -> None:
    """A quick job: records its key."""
    record_run(key)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def slow(key: str, seconds: float) -> None:
    """Records start:KEY, sleeps, records done:KEY."""
    record_run(f"start:{key}")
    time.sleep(seconds)
    record_run(f"done:{key}")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def suicide(key: str) -> None:
    """Records its key, then SIGKILLs its own worker process (a poison message)."""
    record_run(key)
    os.kill(os.getpid(), signal.SIGKILL)


@dramatiq.actor(queue_name=QUEUE, max_retries=50, min_backoff=10, max_backoff=200)
def nap(key: str, ms: int) -> None:
    """Sleeps, then records its key; retried (quickly) when its database connection was killed."""
    time.sleep(ms / 1000.0)
    record_run(key)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def explode(key: str) -> None:
    """Always fails: a dead letter."""
    raise RuntimeError(f"{key} exploded")


# Libraries and modules only the dashboard needs: a worker process must not load them.
DASHBOARD_ONLY = ("starlette", "jinja2", "uvicorn", "multipart")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def loaded_modules(key: str) -> None:
    """Records KEY:{json} with what this worker process has imported (tests/integration/test_layout.py)."""
    seen = {
        "dashboard_libraries": sorted(m for m in sys.modules if m.split(".")[0] in DASHBOARD_ONLY),
        "dashboard_app": "neuron_tasks.dashboard.app" in sys.modules,
        "dashboard_modules": sorted(m for m in sys.modules if m.startswith("neuron_tasks.dashboard")),
        "llm_actors": "neuron_tasks.llm.actors" in sys.modules,
    }
    record_run(f"{key}:{json.dumps(seen)}")
