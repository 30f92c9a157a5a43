"""Before a message that already killed a worker runs again, record that it started, so a
second death counts against it and not against messages merely prefetched beside it."""

from __future__ import annotations

from typing import Any

from dramatiq import Middleware

from neuron_tasks.sql import q


class PoisonGuard(Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        if getattr(message, "deaths", 0) > 0:
            with broker.soft_pool.connection() as conn:
                conn.execute(q("mark_started"), {"id": message.row_id, "owner": broker.owner})
