"""Pipeline jobs (queue "pipelines"): `pipeline_sync(name)`, a thin shell over
neuron_tasks.pipelines.sync. Live-mode triggers enqueue it from SQL in the writer's transaction;
`pipeline_tick()` enqueues the background pipelines and folders that are due (the scheduler's
leader does this itself every second, as its builtin `pipeline_tick`; the actor is for setups
without the scheduler process). Every worker loads them (`neuron-tasks worker`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import dramatiq
from psycopg_pool import ConnectionPool

if TYPE_CHECKING:
    from neuron_tasks.pipelines.engine import Embedder

QUEUE = "pipelines"
_pool: ConnectionPool | None = None
_lock = threading.Lock()


def _broker_pool() -> ConnectionPool:
    global _pool
    pool = getattr(dramatiq.get_broker(), "pool", None)
    if pool is not None:
        return pool
    with _lock:
        if _pool is None:
            from neuron_tasks.config import Settings
            from neuron_tasks.db import make_pool, resolve_url

            _pool = make_pool(resolve_url(Settings()), max_size=4, name="neuron_tasks.pipelines")
        return _pool


def run_pipeline_sync(name: str, pool: ConnectionPool | None = None,
                      embedder: Embedder | None = None) -> dict[str, Any]:
    """Sync `name` (a table pipeline, or a scan of a folder pipeline), waiting for a sync of it
    already running (so no change is left behind)."""
    from neuron_tasks.pipelines import scan_volume, sync
    from neuron_tasks.pipelines.engine import runtime_settings
    from neuron_tasks.pipelines.volume import is_volume
    from neuron_tasks.sql import q

    pool = pool or _broker_pool()
    if is_volume(pool, name):
        return scan_volume(pool, name, wait=True, embedder=embedder)
    settings = runtime_settings(pool)  # with `neuron-tasks config set` values
    res = sync(pool, name, wait=True, embedder=embedder, settings=settings,
               max_seconds=settings.pipelines_sync_slice_s)
    if res.more:
        # The rest in a new job: a long backfill never meets the time limit, and the syncs of
        # other pipelines (and other queues' jobs) get their turn in between.
        with pool.connection() as conn:
            conn.execute(q("pipeline_continue"), {"name": name})
    return res.as_dict()


# Table syncs stop after pipelines_sync_slice_s and continue in a new job; the hour is for folder
# scans, which embed a file's chunks in one go.
@dramatiq.actor(actor_name="neuron_tasks.pipeline_sync", queue_name=QUEUE, time_limit=3_600_000)
def pipeline_sync(name: str) -> dict[str, Any]:
    return run_pipeline_sync(name)


def run_pipeline_tick(url: str | None = None) -> list[str]:
    """Enqueue a sync of each due background pipeline; returns their names."""
    from neuron_tasks.pipelines import enqueue_due

    if url is None:
        from neuron_tasks.config import Settings
        from neuron_tasks.db import resolve_url

        url = resolve_url(Settings())
    return enqueue_due(url)


@dramatiq.actor(actor_name="neuron_tasks.pipeline_tick", queue_name=QUEUE)
def pipeline_tick() -> list[str]:
    return run_pipeline_tick()
