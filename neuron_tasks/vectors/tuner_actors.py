"""The tuner actor: one tuning cycle over every index, or one index.

The scheduler enqueues `neuron_tasks.tune_vector_indexes` every `scheduler_tuner_every_s`
(60 s) on the `maintenance` queue; every worker loads the actor (`neuron-tasks worker`). The
worker process keeps the indexes' graphs loaded between cycles (snapshot + replay of changes).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import dramatiq

QUEUE = "maintenance"


def tune(index: str | None = None) -> list[dict[str, Any]]:
    from neuron_tasks import vectors
    from neuron_tasks.vectors.tuner import tune_all, tune_alpha, tune_index

    client = vectors.client()
    # Tuner settings (targets, strategy, evaluations) follow `neuron-tasks config set` at every cycle.
    client.follow_runtime_settings()
    if index is None:
        decisions = tune_all(client)
    else:
        decisions = [tune_index(client, index)]
        tune_alpha(client, index)
    return [{"index": d.index, "old_ef": d.old_ef, "new_ef": d.new_ef, "reason": d.reason, "alert": d.alert,
             "evaluations": d.evaluations, "after": asdict(d.after) if d.after else None} for d in decisions]


@dramatiq.actor(actor_name="neuron_tasks.tune_vector_indexes", queue_name=QUEUE, max_retries=0, time_limit=600_000)
def tune_vector_indexes(index: str | None = None) -> list[dict[str, Any]]:
    return tune(index)
