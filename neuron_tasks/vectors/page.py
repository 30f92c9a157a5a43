"""The indexes page's data: per index, the tuner's ef, recall and latency over the last day; and
the index gauges for /metrics (ef_search, latest recall, fragmentation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from psycopg.rows import dict_row

from neuron_tasks.core.parts import PageSource
from neuron_tasks.sql import q


def tuner_history(source: PageSource) -> dict[str, list[dict[str, Any]]]:
    """Per index, the ef decisions of the last day, oldest first (at most 200 each)."""
    if not source.exists("neuron_tasks.vector_tuner_decisions"):
        return {}
    with source.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q("vec_page_tuner_history")).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["index_name"], []).append(row)
    return {k: list(reversed(v))[-200:] for k, v in out.items()}


def tuner_charts(source: PageSource) -> dict[str, Any]:
    """Three charts per index: ef_search, recall, p95/p99 latency over the tuner's decisions."""
    charts = []
    for name, rows in tuner_history(source).items():
        labels = [r["at"].astimezone().strftime("%H:%M") for r in rows]
        heading = f"Index {name}: ef_search, recall, latency (tuner decisions, last day)"
        axis = {"labels": labels, "x_label": "tuner decision (local time)"}
        charts += [
            {"heading": heading, "title": f"{name}: ef_search chosen", "unit": "ef_search", **axis,
             "series": [{"name": "ef_search", "values": [r["ef"] for r in rows], "tone": "pending"}]},
            {"title": f"{name}: recall at that ef", "unit": "recall (0-1)", "y_max": 1, **axis,
             "series": [{"name": "recall", "values": [r["recall"] for r in rows], "tone": "finished"}]},
            {"title": f"{name}: search latency", "unit": "ms", **axis,
             "series": [{"name": "p95", "values": [r["p95_ms"] for r in rows], "tone": "retrying"},
                        {"name": "p99", "values": [r["p99_ms"] for r in rows], "tone": "failed"}]},
        ]
    return {"charts": charts}


def gauges(source: PageSource) -> list[dict[str, Any]]:
    """Per index: ef_search, the latest measured recall, fragmentation (tombstones / elements)."""
    if not source.exists("neuron_tasks.vector_indexes"):
        return []
    name = "vec_page_gauges" if source.exists("neuron_tasks.vector_tuner_decisions") else "vec_page_gauges_no_tuner"
    with source.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q(name)).fetchall()


def metric_families(source: PageSource) -> Iterator[GaugeMetricFamily]:
    rows = gauges(source)
    if not rows:
        return
    ef = GaugeMetricFamily("neuron_tasks_index_ef_search", "ef_search published by the tuner.", labels=["index"])
    recall = GaugeMetricFamily("neuron_tasks_index_recall", "Latest measured recall at the tuned ef.",
                               labels=["index"])
    frag = GaugeMetricFamily("neuron_tasks_index_fragmentation", "Tombstones / elements of the HNSW graph.",
                             labels=["index"])
    for row in rows:
        ef.add_metric([row["name"]], float(row["ef_search"]))
        if row["recall"] is not None:
            recall.add_metric([row["name"]], float(row["recall"]))
        frag.add_metric([row["name"]], float(row["fragmentation"] or 0.0))
    yield ef
    yield recall
    yield frag
