"""`neuron-tasks`, the command line: the queue's own commands here, each part's group from its Part.

Nothing in the library imports this package."""

from neuron_tasks.cli.app import app, main

__all__ = ["app", "main"]
