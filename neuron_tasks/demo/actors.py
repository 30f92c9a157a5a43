"""Actors used by `neuron-tasks demo`: ordinary work, slow work, flaky and failing jobs."""

from __future__ import annotations

import time

import dramatiq

from neuron_tasks.core.results import ensure_results

# The results backend (table neuron_tasks.results) before any actor that stores its result.
ensure_results(dramatiq.get_broker())

DEMO_QUEUES = ("demo", "demo_slow")


@dramatiq.actor(queue_name="demo", max_retries=0, store_results=True)
def add(x: int, y: int) -> int:
    """A quick job; its result is stored (`message.get_result()` reads it from any process)."""
    return x + y


@dramatiq.actor(queue_name="demo_slow", max_retries=0)
def slow(ms: int) -> None:
    """A job that takes a while (simulated I/O)."""
    time.sleep(ms / 1000.0)


@dramatiq.actor(queue_name="demo", max_retries=3, min_backoff=100, max_backoff=400)
def flaky(key: str, fail_times: int = 1) -> None:
    """Fails its first `fail_times` runs, then succeeds: exercises retries."""
    from dramatiq.middleware import CurrentMessage

    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message else 0
    if retries < fail_times:
        raise ConnectionError(f"{key}: upstream unavailable (simulated, run {retries + 1})")


@dramatiq.actor(queue_name="demo", max_retries=2, min_backoff=100, max_backoff=300)
def always_fails(key: str) -> None:
    """Never succeeds: ends in the dead letters after its retries."""
    raise ValueError(f"{key}: malformed input (simulated)")
