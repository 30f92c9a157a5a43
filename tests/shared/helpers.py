"""Helpers of the shared behaviour suite that hide where each broker keeps topics and tenants."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
from dramatiq.broker import Broker

from neuron_tasks import PostgresBroker
from neuron_tasks.core.policies import TopicSettings
from neuron_tasks.testing import InMemoryBroker


def add_topic(broker: Broker, name: str, **settings: Any) -> None:
    """Create a topic on either broker (Postgres: the topics table; in memory: broker.topics)."""
    if isinstance(broker, PostgresBroker):
        from neuron_tasks.core.topics import set_topic

        set_topic(broker.pool, name, **settings)
        broker.policies.invalidate()
    else:
        assert isinstance(broker, InMemoryBroker)
        broker.topics[name] = TopicSettings(name, **settings)


def add_tenant(broker: Broker, name: str) -> None:
    """Configure a tenant with no limits on either broker."""
    if isinstance(broker, PostgresBroker):
        from neuron_tasks.core.tenancy import set_tenant

        set_tenant(broker.pool, name)
        broker.policies.invalidate()
    else:
        assert isinstance(broker, InMemoryBroker)
        broker.policies.tenants[name] = broker.policies.tenant_or_default(name)


@contextmanager
def running(broker: Broker, threads: int = 4) -> Iterator[dramatiq.Worker]:
    """An in-process worker on the broker for the duration of the block."""
    broker.emit_after("process_boot")  # starts TimeLimit's monitor, as a worker process does
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=5000)
