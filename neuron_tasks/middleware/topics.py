"""Topics (pg_background_queue): a topic's concurrency holds across the whole cluster, and a
topic may require a delay between the starts of its tasks.

A running message holds one of its topic's slot rows; a slot whose holder is no longer running
under a live lease is free again, so a killed worker cannot leak slots.
"""

from __future__ import annotations

from typing import Any

from dramatiq import Middleware

from ..errors import Deferred
from ..sql import q


class Topics(Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        topic = message.options.get("topic")
        policies = getattr(broker, "policies", None)
        if not topic or policies is None:
            return
        settings = policies.topic(topic)
        if settings is None or (settings.concurrency is None and not settings.delay_s):
            return
        with broker.soft_pool.connection() as conn:
            if settings.concurrency is not None:
                params = {"topic": topic, "holder": message.row_id}
                got = conn.execute(q("topic_acquire_slot"), params).fetchone()
                for _ in range(5):
                    # SKIP LOCKED also skips free slots other workers are taking this instant:
                    # only a topic with no free slot at all is really full.
                    if got is not None or conn.execute(q("topic_free_slots"), params).fetchone()[0] == 0:
                        break
                    got = conn.execute(q("topic_acquire_slot"), params).fetchone()
                if got is None:
                    message.schedule_defer(broker.settings.topic_retry_ms, f"topic {topic!r} is at its concurrency")
                    raise Deferred(f"topic {topic!r} is running {settings.concurrency} tasks")
                message.topic_slot = topic
            if settings.delay_s:
                started = conn.execute(q("topic_start"), {"topic": topic, "delay_s": settings.delay_s}).fetchone()
                if started is None:
                    (wait_s,) = conn.execute(q("topic_next_start"), {"topic": topic}).fetchone() or (0.0,)
                    self._release(broker, message)
                    wait_ms = max(int((wait_s or 0) * 1000), 1)
                    message.schedule_defer(wait_ms, f"topic {topic!r} delay between tasks")
                    raise Deferred(f"topic {topic!r} waits {settings.delay_s}s between tasks")

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._release(broker, message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._release(broker, message)

    @staticmethod
    def _release(broker: Any, message: Any) -> None:
        topic = getattr(message, "topic_slot", None)
        if topic is None:
            return
        message.topic_slot = None
        with broker.soft_pool.connection() as conn:
            conn.execute(q("topic_release_slot"), {"topic": topic, "holder": message.row_id})
