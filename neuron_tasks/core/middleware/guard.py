"""The first middleware a claimed message meets: it checks the message again with the rules of
enqueue (`neuron_tasks.core.options.problem_at_worker`), because a row can get in another way (an
INSERT by hand, an older producer, another encoder). A message Dramatiq or a middleware could not
handle (a `throws` that is no exception type, a max_retries that is text, options that are no
object...) would otherwise break its worker thread or be recorded as finished after failing; it
is dead-lettered with the reason instead, and the thread goes on to the next message. A claimed
message whose lease lapsed before it started (its process was cut off from the database for longer
than the lease) is not run at all (`PgMessageProxy.may_start`)."""

from __future__ import annotations

import dataclasses
import logging

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import SkipMessage

from neuron_tasks.core.consumer import LeaseLapsed, PgMessageProxy
from neuron_tasks.core.options import problem_at_worker

log = logging.getLogger(__name__)


class InvalidMessage(SkipMessage):
    """A claimed message whose options or arguments no enqueue would have accepted; it is
    dead-lettered without running."""


class MessageGuard(Middleware):
    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if isinstance(message, PgMessageProxy) and not message.may_start():
            raise LeaseLapsed(f"its lease lapsed before it started ({message.lapsed}); it was not run here")
        problem = problem_at_worker(message)
        if problem is None:
            return
        if not isinstance(message.options, dict) or not isinstance(message.kwargs, dict):
            # Dramatiq and the broker read both as mappings when they log and record the failure
            # (the row keeps the payload as it came).
            message._message = dataclasses.replace(
                message._message,
                options=message.options if isinstance(message.options, dict) else {},
                kwargs=message.kwargs if isinstance(message.kwargs, dict) else {},
            )
        log.error("message %s (actor %s) cannot run: %s; moved to the dead letters", message.message_id,
                  message.actor_name, problem)
        message.fail()
        raise InvalidMessage(f"{problem} (no enqueue accepts this message; it was not run)")
