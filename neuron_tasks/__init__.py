"""neuron_tasks: distributed background jobs on Dramatiq with PostgreSQL as broker.

    from neuron_tasks import PostgresBroker, periodic, set_default_broker
"""

from typing import Any

from neuron_tasks.config import Settings
from neuron_tasks.core.broker import PostgresBroker, set_default_broker
from neuron_tasks.errors import MessageTooLarge, NeuronTasksError, QueueFull

__all__ = ["MessageTooLarge", "NeuronTasksError", "PostgresBroker", "QueueFull", "Settings", "cancelled",
           "periodic", "set_default_broker"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `periodic` lives with the scheduler, imported on first use (the queue does not need it).
    if name == "periodic":
        from neuron_tasks.scheduler.jobs import periodic

        return periodic
    if name == "cancelled":  # for a running job: was its message cancelled? (core/cancellation.py)
        from neuron_tasks.core.cancellation import cancelled

        return cancelled
    raise AttributeError(f"module 'neuron_tasks' has no attribute {name!r}")
