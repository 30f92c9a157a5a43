"""One error tree for neuron_tasks; every message says what to do next."""

from __future__ import annotations

from dramatiq.errors import BrokerError


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
