"""A message past its `deadline` option fails without running."""

from __future__ import annotations

import time

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy

from neuron_tasks.errors import DeadlineExceeded


class Deadlines(Middleware):
    @property
    def actor_options(self) -> set[str]:
        return {"deadline"}

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        deadline = message.options.get("deadline")
        if not isinstance(deadline, int | float) or isinstance(deadline, bool):
            return
        late_ms = time.time() * 1000 - deadline
        if late_ms > 0:
            message.fail()
            raise DeadlineExceeded(f"deadline passed {late_ms / 1000:.3f}s before the message could run")
