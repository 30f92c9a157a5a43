"""What the middleware may ask of the broker and of the message it is given.

Dramatiq calls every hook with its own `Broker` and `MessageProxy` types; the limits that live in
PostgreSQL (token buckets, topic delays, the poison guard) need the Postgres broker and a message
it claimed, and tenant and topic policies exist on the Postgres and in-memory brokers. These
helpers narrow the types, so that a hook given anything else leaves the message alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dramatiq.broker import Broker, MessageProxy

from neuron_tasks.core.consumer import PgMessageProxy
from neuron_tasks.core.policies import HasPolicies, PolicySource

if TYPE_CHECKING:
    from neuron_tasks.core.broker import PostgresBroker


def postgres(broker: Broker) -> PostgresBroker | None:
    """The broker when it is a PostgresBroker, else None."""
    from neuron_tasks.core.broker import PostgresBroker  # imported here: the broker module imports this package

    return broker if isinstance(broker, PostgresBroker) else None


def policies(broker: Broker) -> PolicySource | None:
    """The broker's tenant and topic policies, None for a broker without any."""
    return broker.policies if isinstance(broker, HasPolicies) else None


def claimed(message: MessageProxy) -> PgMessageProxy | None:
    """The message when the Postgres broker claimed it (it knows its row), else None."""
    return message if isinstance(message, PgMessageProxy) else None
