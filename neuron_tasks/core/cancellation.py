"""`neuron_tasks.cancelled()`: whether the job this thread runs was cancelled while it ran.

`neuron-tasks messages cancel` (or `neuron_tasks.cancel_messages(...)` in SQL) cannot stop a job
half-way: it marks the running message, and the job asks. Whatever the job then does, the message
leaves the queue recorded as cancelled and never runs again (docs/semantics.md#cancel-and-purge).

    @dramatiq.actor
    def crunch(n):
        for chunk in chunks(n):
            if neuron_tasks.cancelled():
                return          # stop cleanly: the history says cancelled
            work(chunk)
"""

from __future__ import annotations

import threading
import time

import dramatiq.broker
from dramatiq.middleware import CurrentMessage
from psycopg.rows import scalar_row

from neuron_tasks.core.middleware.context import claimed, postgres
from neuron_tasks.sql import q

#: A job that asks in a tight loop reads the mark at most this often.
CHECK_EVERY_S = 0.25

_seen = threading.local()


def cancelled() -> bool:
    """True once the message this thread is running has been cancelled; False outside a job, for a
    message no Postgres broker claimed, and until the mark is set. Reads the database at most every
    CHECK_EVERY_S per thread; once True it stays True for that message."""
    message = CurrentMessage.get_current_message()
    proxy = claimed(message) if message is not None else None  # type: ignore[arg-type]
    broker = postgres(dramatiq.broker.global_broker) if dramatiq.broker.global_broker is not None else None
    if proxy is None or broker is None:
        return False
    row_id, now = proxy.row_id, time.monotonic()
    last: tuple[int, float, bool] | None = getattr(_seen, "last", None)
    if last is not None and last[0] == row_id and (last[2] or now - last[1] < CHECK_EVERY_S):
        return last[2]
    with broker.pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
        marked = bool(cur.execute(q("cancel_requested"), {"id": row_id}).fetchone())
    _seen.last = (row_id, now, marked)
    return marked
