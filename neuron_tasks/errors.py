"""One error tree for neuron_tasks; every message says what to do next."""

from __future__ import annotations

from dramatiq.errors import BrokerError
from dramatiq.middleware import SkipMessage


class NeuronTasksError(Exception):
    """Base class of every error raised by neuron_tasks."""


class ConfigurationError(NeuronTasksError):
    """A setting has a value neuron_tasks cannot use."""


class DatabaseUnavailable(NeuronTasksError):
    """PostgreSQL could not be reached or started."""


class MigrationError(NeuronTasksError):
    """A schema migration failed or the schema is out of date."""


class QueueFull(NeuronTasksError, BrokerError):
    """The queue already holds `queue_depth` waiting messages."""

    def __init__(self, queue_name: str, depth: int) -> None:
        super().__init__(
            f"queue {queue_name!r} is full: {depth} messages are already waiting "
            f"(setting queue_depth={depth}); start more workers, wait, or raise "
            "NEURON_TASKS_QUEUE_DEPTH"
        )
        self.queue_name = queue_name
        self.depth = depth


class MessageTooLarge(NeuronTasksError, BrokerError):
    """An encoded message is larger than `max_message_bytes`."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message is {size} bytes, over the limit of {limit} bytes (max_message_bytes); "
            "store large payloads in a table and pass their key instead"
        )
        self.size = size
        self.limit = limit


class InvalidOption(NeuronTasksError, ValueError):
    """A message option has a value the broker cannot store."""


class DeadLettered(NeuronTasksError):
    """Raised by ``join(fail_fast=True)`` when the actor's exception type cannot be rebuilt."""


class UnknownTopic(InvalidOption):
    """A message names a topic that was never configured."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"unknown topic {topic!r}: create it first with `neuron-tasks topics set {topic}`")
        self.topic = topic


class UnknownTenant(InvalidOption):
    """A message names a tenant that is not configured and the tenant policy is 'refuse'."""

    def __init__(self, tenant: str) -> None:
        super().__init__(
            f"unknown tenant {tenant!r} and tenant_policy is 'refuse': create it with "
            f"`neuron-tasks tenants set {tenant} ...` or set NEURON_TASKS_TENANT_POLICY=default"
        )
        self.tenant = tenant


class DuplicateJob(NeuronTasksError, BrokerError):
    """A unique job with the same key is already pending, running or retrying."""

    def __init__(self, fingerprint: str, existing_message_id: str | None) -> None:
        super().__init__(
            f"a job with unique key {fingerprint!r} is already queued or running "
            f"(message {existing_message_id}); pass on_duplicate='existing' to get that message instead"
        )
        self.fingerprint = fingerprint
        self.existing_message_id = existing_message_id


class NonRetryable(NeuronTasksError):
    """Raise (or subclass) this in an actor to send the message straight to the dead letters."""


class DeadlineExceeded(SkipMessage):
    """The message's deadline passed before it could run; it is dead-lettered without running."""


class Deferred(SkipMessage):
    """The message was put back until a tenant or topic limit lets it run (not a failure)."""
