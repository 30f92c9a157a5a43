"""Dramatiq middleware that neuron_tasks adds to its broker, one concern per module."""

from .deadlines import Deadlines
from .message_options import MessageOptions
from .poison import PoisonGuard
from .retries import Retries, non_retryable
from .tenancy import Tenancy
from .topics import Topics
from .worker_stats import WorkerStats

__all__ = ["Deadlines", "MessageOptions", "PoisonGuard", "Retries", "Tenancy", "Topics", "WorkerStats", "non_retryable"]
