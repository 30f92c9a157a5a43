"""The in-memory broker's own mechanics (no PostgreSQL): adopting actors, the global broker,
bookkeeping after flushes and retries, and what it accepts. Behaviour shared with the Postgres
broker is tested on both in tests/shared."""

from __future__ import annotations

import dramatiq
import dramatiq.broker
import pytest
from dramatiq.results import Results

from neuron_tasks import PostgresBroker, Settings
from neuron_tasks.core.policies import TopicSettings
from neuron_tasks.errors import UnknownTopic
from neuron_tasks.testing import InMemoryBroker, use_broker


def fast() -> Settings:
    return Settings(min_backoff_ms=1, max_backoff_ms=5)


def test_use_broker_adopts_the_global_brokers_actors_and_gives_them_back() -> None:
    before = dramatiq.broker.global_broker
    app = PostgresBroker(url="postgresql://nobody@127.0.0.1:1/never-connected")
    dramatiq.set_broker(app)
    try:

        @dramatiq.actor(tenant="acme", topic="mail", unique=True, on_duplicate="existing", deadline=None)
        def deliver(x: int) -> None: ...

        memory = InMemoryBroker(fast(), topics={"mail": TopicSettings("mail", priority=3)})
        with use_broker(memory):
            assert dramatiq.get_broker() is memory and deliver.broker is memory
            first = deliver.send(1)
            assert deliver.send(1).message_id == first.message_id  # actor-level unique + existing
        assert deliver.broker is app and dramatiq.get_broker() is app
    finally:
        if before is not None:
            dramatiq.set_broker(before)


def test_bookkeeping_is_empty_after_retries_delays_and_flushes() -> None:
    broker = InMemoryBroker(fast())
    runs: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=2)
    def wobbly(i: int) -> None:
        runs.append(i)
        if runs.count(i) < 2:
            raise RuntimeError("first try fails")

    for i in range(5):
        wobbly.send_with_options(args=(i,), unique=True, delay=10 * i)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        broker.join_all(timeout=10_000)
    finally:
        worker.stop()
    assert sorted(runs) == sorted([*range(5), *range(5)])
    assert broker._live == {} and broker._unique == {}
    wobbly.send_with_options(args=(9,), unique_key="k", delay=60_000)
    wobbly.send_with_options(args=(8,), unique_key="j")
    broker.flush_all()
    assert broker._live == {} and broker._unique == {}
    wobbly.send_with_options(args=(9,), unique_key="k")  # the key is free again
    broker.flush(wobbly.queue_name)
    broker.join(wobbly.queue_name, timeout=1000)


def test_topics_can_be_added_later_and_results_are_stored() -> None:
    broker = InMemoryBroker(fast())

    @dramatiq.actor(broker=broker, store_results=True)
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(UnknownTopic):
        add.send_with_options(args=(1, 2), topic="math")
    broker.topics["math"] = TopicSettings("math")
    message = add.send_with_options(args=(1, 2), topic="math")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        assert message.get_result(backend=broker.get_results_backend(), block=True, timeout=5000) == 3
    finally:
        worker.stop()
    assert any(isinstance(m, Results) for m in broker.middleware)


def test_an_undeclared_queue_is_declared_on_enqueue() -> None:
    broker = InMemoryBroker(fast())

    @dramatiq.actor(broker=broker)
    def job() -> None: ...

    broker.enqueue(job.message().copy(queue_name="elsewhere"))
    assert "elsewhere" in broker.get_declared_queues()
