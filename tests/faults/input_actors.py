"""Actors of the hostile-input fault tests (queue "faults"); each records its runs in public.test_runs.

The tests enqueue them by name (SQL, or rows inserted raw) and never import this module themselves."""

from __future__ import annotations

import dramatiq

from tests.faults.fault_actors import QUEUE, record_run


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def note(key: str) -> None:
    """Records KEY: proof that the worker still serves."""
    record_run(key)


@dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=10, max_backoff=20)
def always_fails(key: str) -> None:
    """Records start:KEY, then raises ValueError."""
    record_run(f"start:{key}")
    raise ValueError(f"{key} failed on purpose")
