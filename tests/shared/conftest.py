"""The shared behaviour suite's fixtures: each test runs once on the in-memory broker and once on
the Postgres broker, so that the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import Broker

from neuron_tasks import PostgresBroker, Settings
from neuron_tasks.testing import InMemoryBroker

MakeBroker = Callable[..., Broker]


@pytest.fixture(params=["memory", "postgres"])
def make_broker(request: pytest.FixtureRequest) -> Iterator[MakeBroker]:
    """`make_broker(**settings)`: a broker of this run's kind, set as the global broker, closed after.

    Both kinds get the same settings: fast retries (10-50 ms) and the overrides given.
    """
    made: list[Broker] = []
    if request.param == "postgres":
        base: Settings = request.getfixturevalue("settings")  # a clean, migrated database

        def make(**overrides: Any) -> Broker:
            broker = PostgresBroker(settings=base.model_copy(update=overrides))
            made.append(broker)
            dramatiq.set_broker(broker)
            return broker
    else:

        def make(**overrides: Any) -> Broker:
            broker = InMemoryBroker(Settings(**{"min_backoff_ms": 10, "max_backoff_ms": 50, **overrides}))
            made.append(broker)
            dramatiq.set_broker(broker)
            return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def any_broker(make_broker: MakeBroker) -> Broker:
    """A broker of this run's kind with the default test settings."""
    return make_broker()
