"""For Dramatiq's own CLI: `dramatiq neuron_tasks.worker.boot myapp.actors` runs workers on our broker.

A worker refuses to start on a database whose schema is missing or older than this code: it
raises MigrationError, which names `neuron-tasks db upgrade`."""

from __future__ import annotations

from neuron_tasks.core.broker import set_default_broker
from neuron_tasks.core.migrate import require_current

broker = set_default_broker()
require_current(broker.url)
