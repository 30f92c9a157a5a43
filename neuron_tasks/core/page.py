"""The queue's own dashboard pages: tenants (limits, current rate and tokens against them,
throttling) and topics (slots in use against concurrency, messages waiting)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import dict_row

from neuron_tasks.core.parts import PageSource
from neuron_tasks.sql import q

#: At most this many tenants or topics are shown (the first by name).
SHOWN = 200
#: Tenants drawn in the per-minute charts (the busiest of the last hour).
CHARTED = 8


def _rows(source: PageSource, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with source.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q(name), params, prepare=False).fetchall()


def share(used: float | None, limit: float | None) -> float | None:
    """used / limit, for a meter (None when there is no limit)."""
    if not limit or used is None:
        return None
    return float(used) / float(limit)


def tenants(source: PageSource) -> dict[str, Any]:
    """Each tenant's limits beside what it uses now, and jobs and tokens per minute over the last hour."""
    rows = _rows(source, "page_tenants", {"limit": SHOWN})
    for r in rows:
        # jobs started in the last full minute, per second: the rate its QPS limit governs
        r["rate"] = int(r["jobs_last_minute"]) / 60.0
        r["rate_share"] = share(r["rate"], r["qps"])
        r["minute_share"] = share(r["tokens_this_minute"], r["tokens_per_minute"])
        r["day_share"] = share(r["tokens_today"], r["tokens_per_day"])
    charts: list[dict[str, Any]] = []
    if rows:
        names = [r["name"] for r in rows]
        usage = _rows(source, "page_tenant_usage", {"tenants": names})
        now = _rows(source, "page_now_minute", {})[0]["minute"]
        axis: list[datetime] = [now - timedelta(minutes=59 - i) for i in range(60)]
        jobs: dict[str, dict[datetime, int]] = {}
        tokens: dict[str, dict[datetime, int]] = {}
        for u in usage:
            jobs.setdefault(u["tenant"], {})[u["minute"]] = int(u["jobs"])
            tokens.setdefault(u["tenant"], {})[u["minute"]] = int(u["tokens"])
        busiest = sorted(jobs, key=lambda t: -sum(jobs[t].values()))[:CHARTED]
        labels = [m.astimezone().strftime("%H:%M") for m in axis]
        if busiest:
            charts.append({"title": "Jobs per minute by tenant, last hour", "unit": "jobs / min",
                           "x_label": "time (local)", "labels": labels,
                           "series": [{"name": t, "values": [jobs[t].get(m, 0) for m in axis]} for t in busiest]})
            spent = [t for t in busiest if any(tokens.get(t, {}).values())]
            if spent:
                charts.append({"title": "Tokens per minute by tenant, last hour", "unit": "tokens / min",
                               "x_label": "time (local)", "labels": labels,
                               "series": [{"name": t, "values": [tokens[t].get(m, 0) for m in axis]}
                                          for t in spent]})
        per: dict[str, dict[datetime, int]] = {}
        if source.exists("neuron_tasks.tenant_throttles"):
            for t in _rows(source, "page_tenant_throttles", {"tenants": names}):
                per.setdefault(t["tenant"], {})[t["minute"]] = int(t["n"])
        held = sorted(per, key=lambda t: -sum(per[t].values()))[:CHARTED]
        if held:
            charts.append({"kind": "bars", "title": "Times throttled per minute by tenant, last hour",
                           "unit": "throttles / min", "x_label": "time (local)", "labels": labels,
                           "series": [{"name": t, "values": [per[t].get(m, 0) for m in axis]} for t in held]})
    return {"tenants": rows, "charts": charts, "shown": SHOWN}


def topics(source: PageSource) -> dict[str, Any]:
    """Each topic's slots in use against its concurrency, and its messages waiting and running."""
    rows = _rows(source, "page_topics", {"limit": SHOWN, "cap": source.count_cap})
    for r in rows:
        r["slot_share"] = share(r["in_use"], r["concurrency"])
    charts: list[dict[str, Any]] = []
    if rows:
        labels = [r["name"] for r in rows]
        charts.append({"kind": "bars", "title": "Slots in use against concurrency, per topic", "unit": "slots",
                       "x_label": "topic", "labels": labels,
                       "series": [{"name": "in use", "values": [r["in_use"] for r in rows], "tone": "running"},
                                  {"name": "concurrency", "values": [r["concurrency"] or 0 for r in rows],
                                   "tone": "pending"}]})
        charts.append({"kind": "bars", "title": "Messages waiting and running, per topic", "unit": "messages",
                       "x_label": "topic", "labels": labels,
                       "series": [{"name": "waiting", "values": [r["waiting"] for r in rows], "tone": "pending"},
                                  {"name": "running", "values": [r["running"] for r in rows],
                                   "tone": "finished"}]})
    return {"topics": rows, "charts": charts, "cap": source.count_cap, "shown": SHOWN}
