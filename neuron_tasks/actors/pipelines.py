"""Pipeline jobs (queue "pipelines"): `pipeline_sync(name)`, a thin shell over
neuron_tasks.pipelines.sync. Live-mode triggers enqueue it from SQL in the writer's transaction;
run with `neuron-tasks worker neuron_tasks.actors.pipelines`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import dramatiq
from psycopg_pool import ConnectionPool

if TYPE_CHECKING:
    from ..pipelines.engine import Embedder

QUEUE = "pipelines"
_pool: ConnectionPool | None = None
_lock = threading.Lock()


def _broker_pool() -> ConnectionPool:
    global _pool
    pool = getattr(dramatiq.get_broker(), "pool", None)
    if pool is not None:
        return pool  # type: ignore[no-any-return]
    with _lock:
        if _pool is None:
            from ..config import Settings
            from ..db import make_pool, resolve_url

            _pool = make_pool(resolve_url(Settings()), max_size=4, name="neuron_tasks.pipelines")
        return _pool


def run_pipeline_sync(name: str, pool: ConnectionPool | None = None,
                      embedder: Embedder | None = None) -> dict[str, Any]:
    """Sync `name`, waiting for a sync of it already running (so no change is left behind)."""
    from ..pipelines import sync

    return sync(pool or _broker_pool(), name, wait=True, embedder=embedder).as_dict()


@dramatiq.actor(actor_name="neuron_tasks.pipeline_sync", queue_name=QUEUE)
def pipeline_sync(name: str) -> dict[str, Any]:
    return run_pipeline_sync(name)
