"""Pages of parts that land in their own issues (tenants, topics, schedules, indexes, LLM cache,
pipelines). Each checks at request time whether its tables exist and says so plainly if not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from . import pipelines
from .data import DashboardData


@dataclass(frozen=True)
class Part:
    slug: str
    title: str
    tables: tuple[str, ...]
    issue: str
    about: str


PARTS: dict[str, Part] = {p.slug: p for p in (
    Part("tenants", "Tenants", ("neuron_tasks.tenants", "neuron_tasks.tenant_buckets", "neuron_tasks.tenant_usage"),
         "issue 4", "per-tenant QPS and token budgets, their buckets (throttled counts) and usage per minute"),
    Part("topics", "Topics", ("neuron_tasks.topics", "neuron_tasks.topic_slots"),
         "issue 4", "cluster-wide concurrency, retries, delay and priority per topic; the slots in use"),
    Part("schedules", "Schedules", ("neuron_tasks.scheduler_jobs", "neuron_tasks.scheduler_nodes",
                                    "neuron_tasks.scheduler_fires"),
         "issue 6", "periodic jobs with their next fire, the scheduler nodes (leader) and the fire log"),
    Part("indexes", "Indexes", ("neuron_tasks.vector_indexes", "neuron_tasks.vector_tuner_decisions",
                                "neuron_tasks.defrag_runs"),
         "issue 6", "HNSW indexes: ef_search, recall and latency, tuner decisions, defrag runs"),
    Part("llm-cache", "LLM cache", ("neuron_tasks.llm_cache", "neuron_tasks.llm_usage",
                                    "neuron_tasks.llm_provider_state"),
         "issue 5", "cached LLM results (operation, model, input) with hit counts and TTL"),
    Part("pipelines", "Pipelines", ("neuron_tasks.pipelines", "neuron_tasks.pipeline_errors",
                                    "neuron_tasks.pipeline_backlog"),
         "issue 8", "AIDB-style pipelines: backlog, source and destination counts, status, errors"),
)}


def part_page(data: DashboardData, part: Part, *, table: str | None, after: str | None,
              limit: int) -> dict[str, Any]:
    """The installed tables of a part, each as a page of rows (keyset-paged), plus charts data."""
    installed = [t for t in part.tables if data.exists(t)]
    rich = (part.slug == "pipelines" and table is None
            and all(t in installed or data.exists(t) for t in pipelines.TABLES))
    sections = []
    for name in installed:
        if (table is not None and name != table) or rich:  # the pipelines page links its raw tables
            continue
        page = data.table_page(name, after=after if name == table else None, limit=limit)
        page["table"] = name
        page["columns"] = [c for c in page["columns"] if not c.startswith("_")]
        sections.append(page)
    out: dict[str, Any] = {"part": part, "installed": installed,
                           "missing": [t for t in part.tables if t not in installed], "sections": sections}
    if part.slug == "indexes" and "neuron_tasks.vector_tuner_decisions" in installed and table is None:
        out["tuner"] = tuner_history(data)
    if rich:
        out["pipelines"] = pipelines.load(data)
    return out


def tuner_history(data: DashboardData) -> dict[str, list[dict[str, Any]]]:
    """Per index, the ef decisions of the last day (ef, recall, p95 over time) for the charts."""
    with data.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT index_name, at, new_value AS ef, recall, p95_ms, p99_ms FROM neuron_tasks.vector_tuner_decisions"
            " WHERE parameter = 'ef' AND at > now() - interval '1 day' ORDER BY index_name, at DESC LIMIT 2000"
        )
        rows = cur.fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["index_name"], []).append(row)
    return {k: list(reversed(v))[-200:] for k, v in out.items()}


def vector_gauges(data: DashboardData) -> list[dict[str, Any]]:
    """Per index: ef_search, the latest measured recall, fragmentation (tombstones / elements)."""
    if not data.exists("neuron_tasks.vector_indexes"):
        return []
    with_recall = data.exists("neuron_tasks.vector_tuner_decisions")
    recall = ("(SELECT d.recall FROM neuron_tasks.vector_tuner_decisions d WHERE d.index_name = i.name "
              "AND d.parameter = 'ef' AND d.recall IS NOT NULL ORDER BY d.at DESC LIMIT 1)") if with_recall else "NULL"
    with data.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT i.name, i.ef_search, {recall}::float8 AS recall, "
            "CASE WHEN i.live_count + i.deleted_count > 0 "
            "THEN i.deleted_count::float8 / (i.live_count + i.deleted_count) ELSE 0 END AS fragmentation "
            "FROM neuron_tasks.vector_indexes i ORDER BY i.name LIMIT 1000"
        )
        return cur.fetchall()
