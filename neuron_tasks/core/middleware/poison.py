"""Before a message that already killed a worker runs again, record that it started, so a
second death counts against it and not against messages merely prefetched beside it."""

from __future__ import annotations

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy

from neuron_tasks.core.middleware.context import claimed, postgres
from neuron_tasks.sql import q


class PoisonGuard(Middleware):
    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        proxy = claimed(message)
        if proxy is None or proxy.deaths <= 0:
            return
        pg = postgres(broker)
        if pg is not None:
            with pg.soft_pool.connection() as conn:
                conn.execute(q("mark_started"), {"id": proxy.row_id, "owner": pg.owner})
