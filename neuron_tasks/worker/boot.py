"""For Dramatiq's own CLI: `dramatiq neuron_tasks.worker.boot myapp.actors` runs workers on our broker."""

from __future__ import annotations

from neuron_tasks.core.broker import set_default_broker

broker = set_default_broker()
