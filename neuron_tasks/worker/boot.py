"""For Dramatiq's own CLI: `dramatiq neuron_tasks.worker.boot myapp.actors` runs workers on our broker.

A worker refuses to start on a database whose schema is missing or older than this code: importing
this module raises MigrationError, which names `neuron-tasks db upgrade`. A database that cannot be
reached yet is not checked here: the broker waits for it, as it does for any outage."""

from __future__ import annotations

import logging

from neuron_tasks import db
from neuron_tasks.core.broker import set_default_broker
from neuron_tasks.core.migrate import require_current

broker = set_default_broker()
try:
    require_current(broker.url)
except db.UNAVAILABLE as exc:
    logging.getLogger(__name__).warning("schema version not checked: the database is not reachable (%s)",
                                        " ".join(str(exc).split()))
