"""Topics: a topic may require a delay between the starts of its tasks.

A topic's concurrency limit is enforced when messages are claimed (see the `dequeue` query:
a message of a limited topic is claimed only with a free slot of its topic, released by the
completer when it is acked, retried, dead-lettered or deferred). This middleware adds the
delay between starts.
"""

from __future__ import annotations

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy
from psycopg.rows import scalar_row

from neuron_tasks.core.middleware.context import claimed, postgres
from neuron_tasks.errors import Deferred
from neuron_tasks.sql import q


class Topics(Middleware):
    """Defers a message of a topic with a delay between starts until the topic's next start."""

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        topic = message.options.get("topic")
        if not topic:
            return
        pg, proxy = postgres(broker), claimed(message)
        if pg is None or proxy is None:
            return
        settings = pg.policies.topic(topic)
        if settings is None or not settings.delay_s:
            return
        with pg.soft_pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
            started = cur.execute(q("topic_start"), {"topic": topic, "delay_s": settings.delay_s}).fetchone()
            if started is None:
                wait_s = cur.execute(q("topic_next_start"), {"topic": topic}).fetchone()
                wait_ms = max(int((wait_s or 0) * 1000), 1)
                proxy.schedule_defer(wait_ms, f"topic {topic!r} delay between tasks")
                raise Deferred(f"topic {topic!r} waits {settings.delay_s}s between tasks")
