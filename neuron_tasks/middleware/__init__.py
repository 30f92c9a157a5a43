"""Dramatiq middleware that neuron_tasks adds to its broker, one concern per module."""

from .message_options import MessageOptions
from .worker_stats import WorkerStats

__all__ = ["MessageOptions", "WorkerStats"]
