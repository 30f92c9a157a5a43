"""The schedules page of the dashboard: each job's next and last fire, its fire count and the node
that runs it; the scheduler nodes (which one leads); the fire log, newest first, without the
internal ticks that fire every few seconds (their own rows stay one click away)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from psycopg.rows import dict_row

from neuron_tasks.core.parts import PageSource
from neuron_tasks.sql import q

SHOWN = 200
FIRES_SHOWN = 25
#: A built-in job firing at least this often is an internal tick, left out of the fire log.
TICK_S = 60.0
_EVERY = re.compile(r"^every ([0-9.]+)s$")


def _rows(source: PageSource, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with source.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q(name), params, prepare=False).fetchall()


def is_tick(job: dict[str, Any]) -> bool:
    """A built-in job on a short interval (the lease sweeper, the pipelines' tick, ...)."""
    match = _EVERY.match(str(job.get("trigger") or ""))
    return job.get("kind") == "builtin" and match is not None and float(match.group(1)) < TICK_S


def load(source: PageSource) -> dict[str, Any]:
    from neuron_tasks.scheduler.settings import SchedulerSettings

    stale_s = SchedulerSettings().scheduler_node_stale_s
    jobs = _rows(source, "sched_page_jobs", {"limit": SHOWN})
    nodes = _rows(source, "sched_nodes", {"stale_s": stale_s})
    for j in jobs:
        j["tick"] = is_tick(j)
    logged = [j["name"] for j in jobs if not j["tick"]]
    fires = _rows(source, "sched_page_fires", {"jobs": logged, "limit": FIRES_SHOWN}) if logged else []
    charts: list[dict[str, Any]] = []
    if logged:
        now = _rows(source, "sched_page_now_hour", {})[0]["hour"]
        axis = [now - timedelta(hours=23 - i) for i in range(24)]
        per: dict[str, dict[Any, int]] = {}
        for r in _rows(source, "sched_page_fires_per_hour", {"jobs": logged}):
            per.setdefault(r["job"], {})[r["hour"]] = int(r["n"])
        if per:
            busiest = sorted(per, key=lambda k: -sum(per[k].values()))[:8]
            charts.append({"kind": "bars", "title": "Fires per hour by job, last 24 hours", "unit": "fires / h",
                           "x_label": "hour (local)", "labels": [h.astimezone().strftime("%H:00") for h in axis],
                           "series": [{"name": k, "values": [per[k].get(h, 0) for h in axis]} for k in busiest]})
    leader = next((n for n in nodes if n["is_leader"]), None)
    return {"jobs": jobs, "nodes": nodes, "fires": fires, "leader": leader, "charts": charts,
            "charts_in_template": True,
            "ticks": [j["name"] for j in jobs if j["tick"]], "tick_s": TICK_S, "fires_shown": FIRES_SHOWN}
