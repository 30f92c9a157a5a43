"""pytest fixtures for testing actors on the in-memory broker (no PostgreSQL needed).

Loaded automatically through the `pytest11` entry point once neuron_tasks is installed;
or add `pytest_plugins = ["neuron_tasks.testing.pytest_plugin"]` to your conftest.py.

    def test_greets(nt_broker, nt_worker, nt_join):
        greet.send("Ada")                  # an actor declared on nt_broker (see nt_broker)
        nt_join()                           # waits for every queue; re-raises an actor's error

Override `nt_settings` or `nt_topics` in your conftest.py to change the broker's settings
(queue depth, retries, backoff, tenant policy) or the topics that exist.
Actors your modules declared at import on the global broker (say the PostgresBroker of
`set_default_broker()`, which connects only when used) are moved onto `nt_broker` for the test;
`nt_broker.adopt(actor, ...)` moves others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dramatiq
import pytest

from neuron_tasks.config import Settings
from neuron_tasks.core.policies import TopicSettings
from neuron_tasks.testing import InMemoryBroker, join_all, use_broker

#: How long `nt_join()` waits by default before QueueJoinTimeout (milliseconds).
JOIN_TIMEOUT_MS = 10_000


@pytest.fixture
def nt_settings() -> Settings:
    """Settings of the in-memory broker: the environment's, with retries 10-100 ms apart."""
    return Settings(min_backoff_ms=10, max_backoff_ms=100)


@pytest.fixture
def nt_topics() -> dict[str, TopicSettings]:
    """Topics that exist on the in-memory broker (none by default: any topic is refused)."""
    return {}


@pytest.fixture
def nt_broker(nt_settings: Settings, nt_topics: dict[str, TopicSettings]) -> Iterator[InMemoryBroker]:
    """An InMemoryBroker set as Dramatiq's global broker, flushed afterwards.

    Actors declared inside the test bind to it. The actors of the global broker it replaces
    (say the PostgresBroker of your app's `set_default_broker()`, which connects only when used)
    are moved onto it for the test and given back afterwards; move others with
    `nt_broker.adopt(my_actor, ...)`.
    """
    broker = InMemoryBroker(nt_settings, topics=nt_topics)
    with use_broker(broker):
        yield broker
        broker.flush_all()


@pytest.fixture
def nt_worker(nt_broker: InMemoryBroker) -> Iterator[dramatiq.Worker]:
    """A Dramatiq worker (4 threads) on the in-memory broker, stopped afterwards."""
    nt_broker.emit_after("process_boot")  # starts TimeLimit's monitor, as a worker process does
    worker = dramatiq.Worker(nt_broker, worker_threads=4, worker_timeout=50)
    worker.start()
    yield worker
    worker.stop(timeout=5000)


@pytest.fixture
def nt_join(nt_broker: InMemoryBroker) -> Callable[..., None]:
    """`nt_join(timeout=10_000, fail_fast=True)`: wait until every declared queue is empty,
    raising the exception of a dead-lettered message (fail_fast) or QueueJoinTimeout."""

    def join(timeout: int | None = JOIN_TIMEOUT_MS, fail_fast: bool = True) -> None:
        join_all(nt_broker, timeout=timeout, fail_fast=fail_fast)

    return join
