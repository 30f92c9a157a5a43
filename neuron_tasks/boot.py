"""For Dramatiq's own CLI: `dramatiq neuron_tasks.boot myapp.actors` runs workers on our broker.

The same as neuron_tasks.worker.boot, kept at this short path."""

from neuron_tasks.worker.boot import broker

__all__ = ["broker"]
