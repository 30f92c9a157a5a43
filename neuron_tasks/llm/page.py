"""The LLM cache page of the dashboard: the hit ratio (calls answered from the cache against all
calls), the cache's size against its limits, entries per model, and what rotation will evict."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from psycopg.rows import dict_row

from neuron_tasks.core.parts import PageSource
from neuron_tasks.sql import q

#: The newest calls looked at for the hit ratio.
SAMPLE = 20_000


def _rows(source: PageSource, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with source.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q(name), params, prepare=False).fetchall()


def ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def load(source: PageSource) -> dict[str, Any]:
    from neuron_tasks.llm.settings import LlmSettings

    settings = LlmSettings()
    models = _rows(source, "llm_page_cache_models", {})
    entries = sum(int(m["entries"]) for m in models)
    size = sum(int(m["bytes"]) for m in models)
    expired = sum(int(m["expired"]) for m in models)
    max_bytes = int(settings.llm_cache_max_mb * 1024 * 1024)
    calls = _rows(source, "llm_page_calls", {"sample": SAMPLE}) if source.exists("neuron_tasks.llm_usage") else []
    total = sum(int(c["calls"]) for c in calls)
    cached = sum(int(c["cached"]) for c in calls)
    per_model: dict[str, dict[str, int]] = {}
    for c in calls:
        m = per_model.setdefault(f"{c['operation']} {c['model']}", {"calls": 0, "cached": 0, "tokens": 0})
        for k in ("calls", "cached", "tokens"):
            m[k] += int(c[k])
    charts: list[dict[str, Any]] = []
    if calls:
        now = _rows(source, "llm_page_now_hour", {})[0]["hour"]
        axis = [now - timedelta(hours=23 - i) for i in range(24)]
        by_hour: dict[Any, list[int]] = {}
        for c in calls:
            slot = by_hour.setdefault(c["hour"], [0, 0])
            slot[0] += int(c["calls"])
            slot[1] += int(c["cached"])
        labels = [h.astimezone().strftime("%H:00") for h in axis]
        charts.append({"title": "Cache hit ratio per hour, last 24 hours", "unit": "% of calls", "y_max": 100,
                       "x_label": "hour (local)", "labels": labels,
                       "series": [{"name": "hit ratio", "tone": "finished",
                                   "values": [round(100 * by_hour[h][1] / by_hour[h][0], 1) if h in by_hour else None
                                              for h in axis]}]})
        charts.append({"kind": "bars", "title": "Calls per hour, last 24 hours", "unit": "calls / h",
                       "x_label": "hour (local)", "labels": labels,
                       "series": [{"name": "from the cache", "tone": "finished",
                                   "values": [by_hour.get(h, [0, 0])[1] for h in axis]},
                                  {"name": "from the provider", "tone": "pending",
                                   "values": [by_hour.get(h, [0, 0])[0] - by_hour.get(h, [0, 0])[1] for h in axis]}]})
    removed = _rows(source, "llm_page_removals", {}) if source.exists("neuron_tasks.llm_cache_removals") else []
    if removed:
        now = _rows(source, "llm_page_now_hour", {})[0]["hour"]
        axis = [now - timedelta(hours=23 - i) for i in range(24)]
        per_hour = {r["hour"]: int(r["entries"]) for r in removed}
        charts.append({"kind": "bars", "title": "Entries removed per hour (expired or evicted), last 24 hours",
                       "unit": "entries / h", "x_label": "hour (local)",
                       "labels": [h.astimezone().strftime("%H:00") for h in axis],
                       "series": [{"name": "removed", "values": [per_hour.get(h, 0) for h in axis],
                                   "tone": "failed"}]})
    if models:
        by_model: dict[str, list[int]] = {}
        for m in models:
            slot = by_model.setdefault(str(m["model"]), [0, 0])
            slot[0] += int(m["entries"])
            slot[1] += int(m["expired"])
        shown = sorted(by_model.items(), key=lambda kv: -kv[1][0])[:12]
        charts.append({"kind": "bars", "title": "Cache entries per model", "unit": "entries", "x_label": "model",
                       "labels": [name for name, _ in shown],
                       "series": [{"name": "entries", "values": [v[0] for _, v in shown], "tone": "pending"},
                                  {"name": "expired", "values": [v[1] for _, v in shown], "tone": "failed"}]})
    return {
        "models": models, "entries": entries, "bytes": size, "expired": expired,
        "max_entries": settings.llm_cache_max_entries, "max_bytes": max_bytes,
        "entries_share": entries / settings.llm_cache_max_entries, "bytes_share": size / max_bytes,
        "over_entries": max(entries - settings.llm_cache_max_entries, 0),
        "calls": total, "cached": cached, "hit_ratio": ratio(cached, total), "sample": SAMPLE,
        "per_model": sorted(per_model.items(), key=lambda kv: -kv[1]["calls"]),
        "ttl_s": settings.llm_cache_ttl_s, "charts": charts,
        "removed_day": sum(int(r["entries"]) for r in removed),
    }
