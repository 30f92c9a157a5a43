"""Dramatiq middleware that neuron_tasks adds to its broker, one concern per module."""

from neuron_tasks.core.middleware.deadlines import Deadlines
from neuron_tasks.core.middleware.guard import InvalidMessage, MessageGuard
from neuron_tasks.core.middleware.message_options import MessageOptions
from neuron_tasks.core.middleware.poison import PoisonGuard
from neuron_tasks.core.middleware.retries import Retries, non_retryable
from neuron_tasks.core.middleware.tenancy import Tenancy
from neuron_tasks.core.middleware.topics import Topics
from neuron_tasks.core.middleware.worker_stats import WorkerStats

__all__ = ["Deadlines", "InvalidMessage", "MessageGuard", "MessageOptions", "PoisonGuard", "Retries", "Tenancy",
           "Topics", "WorkerStats", "non_retryable"]
