"""Dramatiq's Retries (exponential backoff with jitter), plus: max_retries per topic, a
`Retry-After` carried by the exception, and exceptions marked non-retryable. A failure that
cannot be decided (an option no enqueue accepts, a broken `retry_after`) dead-letters the
message with the reason: Dramatiq would otherwise log the error and record the job as finished."""

from __future__ import annotations

from typing import Any

import dramatiq.middleware
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import Retry

from neuron_tasks.core.middleware.context import policies
from neuron_tasks.core.options import HORIZON_MS, finite_number
from neuron_tasks.errors import InvalidOption, NonRetryable

_non_retryable: set[type[BaseException]] = set()


def non_retryable(exc_type: type[BaseException]) -> type[BaseException]:
    """Mark an exception class (usable as a decorator): messages failing with it are dead-lettered at once."""
    _non_retryable.add(exc_type)
    return exc_type


def is_non_retryable(exc: BaseException) -> bool:
    if isinstance(exc, NonRetryable) or getattr(type(exc), "retryable", True) is False:
        return True
    return any(isinstance(exc, t) for t in _non_retryable)


def retry_after_ms(exc: BaseException) -> int | None:
    """Milliseconds from an exception's `retry_after` (seconds) attribute, if it has a usable one
    (a finite number >= 0; capped at the longest delay a message may have)."""
    value = getattr(exc, "retry_after", None)
    if finite_number(value) and value >= 0:
        return int(min(value * 1000, HORIZON_MS))
    return None


class Retries(dramatiq.middleware.Retries):
    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            return
        try:
            self._after_failure(broker, message, exception)
        except Exception as exc:
            reason = f"could not decide whether to retry after {type(exception).__name__}: {type(exc).__name__}: {exc}"
            self.logger.error("Message %r: %s; moving it to the dead letters.", message.message_id, reason)
            message.fail()
            message.stuff_exception(InvalidOption(f"{reason} (the job failed with: {exception})"))

    def _after_failure(self, broker: Broker, message: MessageProxy, exception: BaseException) -> None:
        if is_non_retryable(exception):
            self.logger.info("Message %r failed with a non-retryable %s.", message.message_id,
                             type(exception).__name__)
            message.fail()
            return
        topic = message.options.get("topic")
        source = policies(broker)
        if topic and source is not None and "max_retries" not in message.options:
            settings = source.topic(topic)
            if settings is not None and settings.max_retries is not None:
                message.options["max_retries"] = settings.max_retries
        delay = retry_after_ms(exception)
        if delay is not None and not isinstance(exception, Retry):
            actor = broker.get_actor(message.actor_name)
            throws = message.options.get("throws") or actor.options.get("throws")
            if not (throws and isinstance(exception, throws)):
                exception = Retry(str(exception), delay=delay)
        super().after_process_message(broker, message, result=None, exception=exception)
