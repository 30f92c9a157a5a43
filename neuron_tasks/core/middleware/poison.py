"""Before a message that already killed a worker runs again, record that it started, so a
second death counts against it and not against messages merely prefetched beside it; and record
its own limit of deaths, its max_retries as Retries reads it (message option > topic > actor), so
the sweeper dead-letters it after as many crashes as it would be retried after failures (at least
one re-run after a crash, whatever the limit). A first death never dead-letters a message, so
the limit is needed only from the second run on, when this write happens anyway."""

from __future__ import annotations

from typing import Any

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import ActorNotFound

from neuron_tasks.core.middleware.context import claimed, policies, postgres
from neuron_tasks.core.options import INT32_MAX
from neuron_tasks.sql import q


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT32_MAX:
        return value
    return None


def max_retries_of(broker: Broker, message: MessageProxy) -> int | None:
    """The message's max_retries as Retries reads it: its own option, else its topic's, else its
    actor's; None when none sets one (the sweeper then applies the max_retries setting)."""
    if "max_retries" in message.options:
        return _count(message.options["max_retries"])
    topic = message.options.get("topic")
    source = policies(broker)
    if isinstance(topic, str) and source is not None:
        settings = source.topic(topic)
        if settings is not None and settings.max_retries is not None:
            return settings.max_retries
    try:
        actor = broker.get_actor(message.actor_name)
    except ActorNotFound:
        return None
    return _count(actor.options.get("max_retries"))


class PoisonGuard(Middleware):
    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        proxy = claimed(message)
        if proxy is None or proxy.deaths <= 0:
            return
        pg = postgres(broker)
        if pg is not None:
            with pg.soft_pool.connection() as conn:
                conn.execute(q("poison_mark_started"), {"id": proxy.row_id, "owner": pg.owner,
                                                        "max_retries": max_retries_of(broker, message)})
