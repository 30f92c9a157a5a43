"""Topics (pg_background_queue): a topic may require a delay between the starts of its tasks.

A topic's concurrency limit is enforced when messages are claimed (see the `dequeue` query:
a message of a limited topic is claimed only with a free slot of its topic, released by the
completer when it is acked, retried, dead-lettered or deferred). This middleware adds the
delay between starts.
"""

from __future__ import annotations

from typing import Any

from dramatiq import Middleware

from neuron_tasks.errors import Deferred
from neuron_tasks.sql import q


class Topics(Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        topic = message.options.get("topic")
        policies = getattr(broker, "policies", None)
        if not topic or policies is None:
            return
        settings = policies.topic(topic)
        if settings is None or not settings.delay_s:
            return
        with broker.soft_pool.connection() as conn:
            started = conn.execute(q("topic_start"), {"topic": topic, "delay_s": settings.delay_s}).fetchone()
            if started is None:
                (wait_s,) = conn.execute(q("topic_next_start"), {"topic": topic}).fetchone() or (0.0,)
                wait_ms = max(int((wait_s or 0) * 1000), 1)
                message.schedule_defer(wait_ms, f"topic {topic!r} delay between tasks")
                raise Deferred(f"topic {topic!r} waits {settings.delay_s}s between tasks")
