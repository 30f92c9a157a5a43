"""neuron_tasks: distributed background jobs on Dramatiq with PostgreSQL as broker."""

from neuron_tasks.config import Settings
from neuron_tasks.core.broker import PostgresBroker, set_default_broker
from neuron_tasks.errors import MessageTooLarge, NeuronTasksError, QueueFull

__all__ = ["MessageTooLarge", "NeuronTasksError", "PostgresBroker", "QueueFull", "Settings", "set_default_broker"]
__version__ = "0.1.0"
