"""Pipelines (after EDB AIDB): keep embeddings of a Postgres table in sync.

    from neuron_tasks import pipelines
    pipelines.create_pipeline(url, "docs", source="docs", key="id", data="body", mode="background")
    pipelines.sync(pool, "docs")          # the backfill, then every later change
    pipelines.list_pipelines(url)         # the pipeline_metrics view
    pipelines.search(pool, url, "docs", "refund policy", k=5)   # embed the query, search

destination="index:NAME" writes a neuron_tasks.vectors HNSW index instead of a table.

From SQL: `SELECT neuron_tasks.create_pipeline('docs', 'docs', 'id', 'body')`.
"""

from neuron_tasks.pipelines.engine import Embedder, SyncResult, service_embedder, sync
from neuron_tasks.pipelines.manage import (
    MODES,
    PipelineError,
    create_pipeline,
    drop_pipeline,
    enqueue_due,
    get_pipeline,
    list_pipelines,
    parse_step,
    pipeline_errors,
    update_pipeline,
)
from neuron_tasks.pipelines.search import PipelineHit, search
from neuron_tasks.pipelines.settings import PipelineSettings
from neuron_tasks.pipelines.volume import (
    chunk_text,
    create_volume_pipeline,
    drop_volume_pipeline,
    get_volume,
    scan_volume,
)

__all__ = [
    "MODES",
    "Embedder",
    "PipelineError",
    "PipelineHit",
    "PipelineSettings",
    "SyncResult",
    "chunk_text",
    "create_pipeline",
    "create_volume_pipeline",
    "drop_pipeline",
    "drop_volume_pipeline",
    "enqueue_due",
    "get_pipeline",
    "get_volume",
    "list_pipelines",
    "parse_step",
    "pipeline_errors",
    "scan_volume",
    "search",
    "service_embedder",
    "sync",
    "update_pipeline",
]
