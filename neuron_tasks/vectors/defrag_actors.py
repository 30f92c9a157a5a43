"""The defrag actor: one maintenance pass over every index (or one).

The scheduler enqueues `neuron_tasks.defrag_indexes` every `scheduler_defrag_every_s` (300 s)
on the `maintenance` queue once schema/007_defrag.sql is applied; every worker loads the actor
(`neuron-tasks worker`). The work is neuron_tasks.vectors.defrag.
"""

from __future__ import annotations

from typing import Any

import dramatiq

QUEUE = "maintenance"


def run(index: str | None = None, force: bool = False) -> dict[str, Any]:
    from neuron_tasks import vectors
    from neuron_tasks.core.runtime import overlay
    from neuron_tasks.vectors.defrag import defrag_all, defrag_index
    from neuron_tasks.vectors.defrag_settings import DefragSettings

    client = vectors.client()
    settings = overlay(DefragSettings(), client.url)  # with `neuron-tasks config set` values
    if index is None:
        return defrag_all(client, settings, force=force)
    return {"indexes": [defrag_index(client, index, settings, force=force)], "vacuumed": []}


@dramatiq.actor(actor_name="neuron_tasks.defrag_indexes", queue_name=QUEUE, max_retries=0, time_limit=3_600_000)
def defrag_indexes(index: str | None = None, force: bool = False) -> dict[str, Any]:
    return run(index, force)
